package service

import "testing"

// TestUnsafeReplyUnwrapsGatewayReplies: a request that crossed a NATS
// gateway carries its reply subject behind the gateway's prefix
// (_GR_.<cluster hash>.<server hash>.<reply>; $GR. on old servers), and the
// origin cluster delivers the answer on <reply> as it is. So a reply
// subject $KV.lockservice.l.<key> sent from another cluster reaches the
// service as _GR_.x.y.$KV.lockservice.l.<key> (a client cannot send that
// form itself: nats-server refuses reserved reply subjects). What must hold: the service judges the reply subject behind
// the prefix, refusing the same subjects as without a gateway and answering
// inboxes behind it (and not refusing them for the prefix's $).
func TestUnsafeReplyUnwrapsGatewayReplies(t *testing.T) {
	s := &Service{cfg: Config{Prefix: "lock"}}
	for reply, unsafe := range map[string]bool{
		"_INBOX.billing.abc.1":                                  false,
		"_GR_.aBc123.dEf456._INBOX.billing.1":                   false,
		"$GR.aBc123.dEf456._INBOX.billing.1":                    false,
		"_R_.abc.def":                                           false,
		"$KV.lockservice.l.shipping.orders":                     true,
		"lock.admin.force.shipping.orders":                      true,
		"_GR_.aBc123.dEf456.$KV.lockservice.l.x":                true,
		"$GR.aBc123.dEf456.$KV.lockservice.l.x":                 true,
		"_GR_.aBc123.dEf456.lock.expired.x":                     true,
		"_GR_.a.b._GR_.c.d.$JS.API.STREAM.PURGE.KV_lockservice": true,
		"lock":     true,
		"lockx.y":  false,
		"_INBOX.*": true,
	} {
		if got := s.unsafeReply(reply) != ""; got != unsafe {
			t.Errorf("unsafeReply(%q) = %q, want unsafe %v", reply, s.unsafeReply(reply), unsafe)
		}
	}
}
