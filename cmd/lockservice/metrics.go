package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
)

// monitor serves --metrics-addr: Prometheus metrics on /metrics, /healthz
// (the process is up) and /readyz (the instance can serve:
// service.Ready). It is the service's Observer, and reads the service's
// counters (service.Stats) at each scrape. Its registry is its own, with
// the Go runtime, process and build-info collectors.
type monitor struct {
	reg      *prometheus.Registry
	svc      atomic.Pointer[service.Service]
	info     atomic.Pointer[[]string] // the labels of lockservice_info
	srv      *http.Server
	log      *slog.Logger
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	storeDur *prometheus.HistogramVec
	storeErr *prometheus.CounterVec
}

// endpoints are the values of the endpoint label.
var endpoints = []string{api.OpAcquire, api.OpRelease, api.OpRefresh, api.OpWrite, api.OpDelete, api.OpGet,
	api.OpWait, api.OpCancel, api.OpAlive, api.OpAdminList, api.OpAdminForce}

// startMonitor listens on addr and serves; nil, without error, when addr
// is empty (metrics are off).
func startMonitor(addr string, log *slog.Logger) (*monitor, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w (pick a free address, or leave it empty to serve no metrics)", addr, err)
	}
	m := newMonitor(log)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", m.readyz)
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", slog.String("addr", addr), slog.Any("err", err))
		}
	}()
	return m, nil
}

func newMonitor(log *slog.Logger) *monitor {
	m := &monitor{
		reg: prometheus.NewRegistry(),
		log: log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockservice_requests_total",
			Help: "Requests answered, by endpoint and code (200: a success, acquired:false included; else the error code).",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lockservice_request_duration_seconds",
			Help:    "Time from a request's receipt to its answer, by endpoint (a blocking acquire or wait includes its wait).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"endpoint"}),
		storeDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lockservice_store_call_duration_seconds",
			Help:    "Duration of store calls by operation and outcome (ok, locked, not_held, invalid: answered; timeout, unavailable, error: failed; canceled).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"op", "outcome"}),
		storeErr: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockservice_store_errors_total",
			Help: "Store calls that failed, by kind (timeout, unavailable, error).",
		}, []string{"kind"}),
	}
	for _, e := range endpoints {
		m.requests.WithLabelValues(e, "200")
		m.duration.WithLabelValues(e)
	}
	for _, k := range []string{service.OutcomeTimeout, service.OutcomeUnavailable, service.OutcomeError} {
		m.storeErr.WithLabelValues(k)
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		m.requests, m.duration, m.storeDur, m.storeErr,
		statsCollector{m},
	)
	return m
}

// observer is the service's Observer: m, or none when metrics are off.
func (m *monitor) observer() service.Observer {
	if m == nil {
		return nil
	}
	return m
}

// serving makes the monitor report on svc, whose store is storeKind.
func (m *monitor) serving(svc *service.Service, storeKind, prefix string) {
	if m == nil {
		return
	}
	m.info.Store(&[]string{service.Version, svc.ID(), storeKind, prefix})
	m.svc.Store(svc)
}

// close stops serving.
func (m *monitor) close() {
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
}

// Answered implements service.Observer.
func (m *monitor) Answered(op string, code int, d time.Duration) {
	c := "200"
	if code != 0 {
		c = strconv.Itoa(code)
	}
	m.requests.WithLabelValues(op, c).Inc()
	m.duration.WithLabelValues(op).Observe(d.Seconds())
}

// StoreCalled implements service.Observer.
func (m *monitor) StoreCalled(c service.StoreCall) {
	m.storeDur.WithLabelValues(c.Op, c.Outcome).Observe(c.Duration.Seconds())
	if c.Failed() {
		m.storeErr.WithLabelValues(c.Outcome).Inc()
	}
}

// readyz answers 200 when the service is ready, else 503 saying why.
func (m *monitor) readyz(w http.ResponseWriter, r *http.Request) {
	svc := m.svc.Load()
	if svc == nil {
		http.Error(w, "starting", http.StatusServiceUnavailable)
		return
	}
	if err := svc.Ready(r.Context()); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// statsCollector turns the service's counters into metrics at each scrape.
type statsCollector struct{ m *monitor }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descInfo          = desc("lockservice_info", "The instance: version, instance id (as in nats micro), store, subject prefix. Always 1.", "version", "instance", "store", "prefix")
	descGrants        = desc("lockservice_grants_total", "Locks granted through this instance.")
	descHandoffs      = desc("lockservice_handoffs_total", "Grants made by a release handing the lock to a request parked here, in one store operation.")
	descExpiryWakeups = desc("lockservice_expiry_wakeups_total", "Lease expiries that woke requests parked on their key here.")
	descEvents        = desc("lockservice_events_published_total", "Events this instance published, by event (released, expired, forced).", "event")
	descParked        = desc("lockservice_parked_requests", "Blocking acquire and wait requests parked on this instance.")
	descWaitedKeys    = desc("lockservice_waited_keys", "Keys with requests parked on this instance.")
	descInflight      = desc("lockservice_inflight_operations", "Store operations of this instance in progress (at --max-inflight more get 503).")
	descOverloaded    = desc("lockservice_overloaded_total", "Requests refused with 503 because --max-inflight operations were in progress.")
	descWaitTimeouts  = desc("lockservice_wait_timeouts_total", "Blocking requests answered when their wait_ms ran out.")
	descGivenBack     = desc("lockservice_given_back_total", "Grants this instance released because their lock id was retired (cancelled, lapsed, undelivered).")
	descLapsed        = desc("lockservice_lapsed_total", "Parked requests dropped because their client stopped renewing their liveness window.")
	descUndelivered   = desc("lockservice_undelivered_total", "Grants whose answer reached nobody (given back).")
)

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descGrants, descHandoffs, descExpiryWakeups, descEvents, descParked,
		descWaitedKeys, descInflight, descOverloaded, descWaitTimeouts, descGivenBack, descLapsed, descUndelivered} {
		ch <- d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	svc := c.m.svc.Load()
	if svc == nil {
		return
	}
	st := svc.Stats()
	ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, *c.m.info.Load()...)
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter(descGrants, st.Grants)
	counter(descHandoffs, st.Handoffs)
	counter(descExpiryWakeups, st.ExpiryWakeups)
	for _, e := range []string{api.EventReleased, api.EventExpired, api.EventForced} {
		counter(descEvents, st.Events[e], e)
	}
	gauge(descParked, st.ParkedWaiters)
	gauge(descWaitedKeys, st.WaitedKeys)
	gauge(descInflight, st.Inflight)
	counter(descOverloaded, st.Overloaded)
	counter(descWaitTimeouts, st.WaitTimeouts)
	counter(descGivenBack, st.GivenBack)
	counter(descLapsed, st.Lapsed)
	counter(descUndelivered, st.Undelivered)
}
