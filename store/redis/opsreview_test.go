package redis_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/redis"
)

// TestStartErrorOfSentinelNamesNoPlaceholder: with Sentinel, New's error
// when nothing answers said "redis at FailoverClient does not answer PING":
// go-redis's placeholder address, not something an operator can look up
// (issue 12 asked for the Redis address in such messages; the replica
// error was fixed, this one not).
func TestStartErrorOfSentinelNamesNoPlaceholder(t *testing.T) {
	sentinel := "127.0.0.1:" + strconv.Itoa(testsrv.FreePort(t))
	rdb := goredis.NewFailoverClient(&goredis.FailoverOptions{MasterName: "mymaster", SentinelAddrs: []string{sentinel}, MaxRetries: -1})
	defer rdb.Close()
	_, err := redis.New(t.Context(), rdb, redis.Config{})
	if !errors.Is(err, store.ErrUnavailable) || strings.Contains(err.Error(), "FailoverClient") || !strings.Contains(err.Error(), "Sentinel") {
		t.Errorf("New with Sentinel down = %v, want ErrUnavailable naming the Sentinel primary, not %q", err, "FailoverClient")
	}
}
