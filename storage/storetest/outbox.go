package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

func outboxEvent(id, typ string, uid int64, targets ...string) storage.OutboxEvent {
	return storage.OutboxEvent{
		Event:   storage.Event{ID: id, Type: typ, UserID: uid, CreatedAt: time.Now().UTC(), Data: json.RawMessage(`{"balance":5}`)},
		Targets: targets,
	}
}

func mustWebhook(t *testing.T, s storage.Store, uid int64, events ...string) *storage.Webhook {
	t.Helper()
	w := &storage.Webhook{UserID: uid, URL: "https://example.com/hook", Events: events, Secret: "enc", IsActive: true}
	if err := s.CreateWebhook(context.Background(), w, 5); err != nil {
		t.Fatal(err)
	}
	if w.ID == 0 || w.CreatedAt.IsZero() {
		t.Fatalf("CreateWebhook did not set id and time: %+v", w)
	}
	return w
}

func targetsOf(ds []storage.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Event.ID+"→"+d.Target)
	}
	sort.Strings(out)
	return out
}

// confWebhooks: create up to the cap, list, get, delete (only the owner's).
func confWebhooks(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, _ := Register(t, s, "hooks@example.com", 10)
	other, _ := Register(t, s, "other@example.com", 10)
	var ids []int64
	for i := range 3 {
		w := &storage.Webhook{UserID: u.ID, URL: fmt.Sprintf("https://example.com/%d", i), Events: []string{"*"}, Secret: "enc", IsActive: true}
		if err := s.CreateWebhook(ctx, w, 3); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, w.ID)
	}
	extra := &storage.Webhook{UserID: u.ID, URL: "https://example.com/x", Events: []string{"*"}, IsActive: true}
	if err := s.CreateWebhook(ctx, extra, 3); !errors.Is(err, storage.ErrTooMany) {
		t.Fatalf("fourth webhook with a cap of 3: %v", err)
	}
	if err := s.CreateWebhook(ctx, &storage.Webhook{UserID: 1 << 40, URL: "https://example.com/", IsActive: true}, 3); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("webhook of an unknown user: %v", err)
	}
	hooks, err := s.ListWebhooks(ctx, u.ID)
	if err != nil || len(hooks) != 3 || hooks[0].ID != ids[0] || hooks[2].URL != "https://example.com/2" {
		t.Fatalf("ListWebhooks = %+v, %v", hooks, err)
	}
	if got, err := s.GetWebhook(ctx, ids[1]); err != nil || got.UserID != u.ID || got.Secret != "enc" || got.Events[0] != "*" {
		t.Fatalf("GetWebhook = %+v, %v", got, err)
	}
	if err := s.DeleteWebhook(ctx, other.ID, ids[0]); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("deleting another user's webhook: %v", err)
	}
	if err := s.DeleteWebhook(ctx, u.ID, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetWebhook(ctx, ids[0]); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("deleted webhook: %v", err)
	}
	if hooks, _ := s.ListWebhooks(ctx, u.ID); len(hooks) != 2 {
		t.Fatalf("after delete: %d webhooks", len(hooks))
	}
	// The cap counts what is left.
	if err := s.CreateWebhook(ctx, extra, 3); err != nil {
		t.Fatal(err)
	}
	// A deleted user's webhooks go with them.
	if err := s.DeleteUser(ctx, u.ID); err != nil {
		t.Fatal(err)
	}
	if hooks, err := s.ListWebhooks(ctx, u.ID); err != nil || len(hooks) != 0 {
		t.Fatalf("webhooks of a deleted user: %+v, %v", hooks, err)
	}
}

// confOutbox: events fan out to the operator targets and the user's
// subscribed webhooks, once per event id; claims lease; outcomes retry,
// deliver or give up; the deliveries views filter by owner.
func confOutbox(t *testing.T, s storage.Store) {
	ctx := context.Background()
	u, _ := Register(t, s, "alerts@example.com", 10)
	other, _ := Register(t, s, "quiet@example.com", 10)
	low := mustWebhook(t, s, u.ID, "balance.low")
	all := mustWebhook(t, s, u.ID, "*")
	mustWebhook(t, s, other.ID, "*")

	if err := s.AppendEvents(ctx, []storage.OutboxEvent{
		outboxEvent("evt_1", "balance.low", u.ID, "operator:a", "operator:b"),
		outboxEvent("evt_2", "credits.added", u.ID),
	}); err != nil {
		t.Fatal(err)
	}
	// The same event again (another node, a retried batch) adds nothing.
	if err := s.AppendEvents(ctx, []storage.OutboxEvent{outboxEvent("evt_1", "balance.low", u.ID, "operator:a")}); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendEvents(ctx, []storage.OutboxEvent{{Event: storage.Event{Type: "x"}}}); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("event without id: %v", err)
	}

	now := time.Now()
	claimed, err := s.ClaimDeliveries(ctx, now.Add(time.Second), time.Minute, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"evt_1→operator:a", "evt_1→operator:b",
		"evt_1→" + storage.WebhookTarget(low.ID), "evt_1→" + storage.WebhookTarget(all.ID),
		"evt_2→" + storage.WebhookTarget(all.ID),
	}
	sort.Strings(want)
	if got := targetsOf(claimed); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("claimed %v, want %v", got, want)
	}
	for _, d := range claimed {
		if d.State != storage.DeliveryPending || d.Event.UserID != u.ID || string(d.Event.Data) != `{"balance":5}` || d.Event.Type == "" {
			t.Fatalf("claimed delivery %+v", d)
		}
		if d.WebhookID != 0 && d.OwnerID != u.ID {
			t.Fatalf("webhook delivery without its owner: %+v", d)
		}
	}
	// Leased: not claimed again before the lease ends.
	if again, err := s.ClaimDeliveries(ctx, now.Add(30*time.Second), time.Minute, 100); err != nil || len(again) != 0 {
		t.Fatalf("claimed during the lease: %v, %v", targetsOf(again), err)
	}

	byTarget := map[string]storage.Delivery{}
	for _, d := range claimed {
		byTarget[d.Event.ID+"→"+d.Target] = d
	}
	at := now.Add(2 * time.Second)
	finish := func(key string, r storage.DeliveryResult) {
		t.Helper()
		r.At = at
		if err := s.FinishDelivery(ctx, byTarget[key].ID, r); err != nil {
			t.Fatal(err)
		}
	}
	finish("evt_1→operator:a", storage.DeliveryResult{Status: 200, Delivered: true})
	finish("evt_1→operator:b", storage.DeliveryResult{Status: 500, Error: "HTTP 500", RetryAt: now.Add(10 * time.Minute)})
	finish("evt_2→"+storage.WebhookTarget(all.ID), storage.DeliveryResult{Error: "gone", RetryAt: time.Time{}})
	if err := s.FinishDelivery(ctx, 1<<40, storage.DeliveryResult{At: at, Delivered: true}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("finishing an unknown delivery: %v", err)
	}

	// After the lease: the two never finished are due again; the retry
	// only once its time comes.
	next, err := s.ClaimDeliveries(ctx, now.Add(2*time.Minute), time.Hour, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := targetsOf(next), []string{"evt_1→" + storage.WebhookTarget(low.ID), "evt_1→" + storage.WebhookTarget(all.ID)}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the lease: %v, want %v", got, want)
	}
	retry, err := s.ClaimDeliveries(ctx, now.Add(11*time.Minute), time.Minute, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(retry) != 1 || retry[0].Target != "operator:b" || retry[0].Attempts != 1 || retry[0].LastStatus != 500 {
		t.Fatalf("retry claim: %+v", retry)
	}

	// A ping goes to the tested webhook only, subscribed or not.
	ping := outboxEvent("evt_ping", "ping", u.ID, "operator:a")
	ping.Targets, ping.Webhook = nil, low.ID
	if err := s.AppendEvents(ctx, []storage.OutboxEvent{ping}); err != nil {
		t.Fatal(err)
	}
	pings, err := s.ClaimDeliveries(ctx, now.Add(20*time.Minute), time.Minute, 100)
	if err != nil {
		t.Fatal(err)
	}
	var pinged []string
	for _, d := range pings {
		if d.Event.ID == "evt_ping" {
			pinged = append(pinged, d.Target)
		}
	}
	if fmt.Sprint(pinged) != fmt.Sprint([]string{storage.WebhookTarget(low.ID)}) {
		t.Fatalf("ping delivered to %v", pinged)
	}

	// The views: the owner's sees their webhooks' deliveries, newest first.
	mine, err := s.ListDeliveries(ctx, storage.DeliveryFilter{OwnerID: u.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(mine) != 4 {
		t.Fatalf("owner's deliveries: %v", targetsOf(mine))
	}
	for i, d := range mine {
		if d.WebhookID == 0 || d.OwnerID != u.ID || i > 0 && d.ID > mine[i-1].ID {
			t.Fatalf("owner's deliveries not theirs or not newest first: %+v", mine)
		}
	}
	if d := byTarget["evt_2→"+storage.WebhookTarget(all.ID)]; true {
		for _, m := range mine {
			if m.ID == d.ID && (m.State != storage.DeliveryFailed || m.Attempts != 1 || m.LastError != "gone" || m.LastAttemptAt == nil) {
				t.Fatalf("failed delivery shows %+v", m)
			}
		}
	}
	if theirs, err := s.ListDeliveries(ctx, storage.DeliveryFilter{OwnerID: other.ID}); err != nil || len(theirs) != 0 {
		t.Fatalf("a user without events sees %v, %v", targetsOf(theirs), err)
	}
	everything, err := s.ListDeliveries(ctx, storage.DeliveryFilter{Limit: 3})
	if err != nil || len(everything) != 3 {
		t.Fatalf("limited admin view: %v, %v", targetsOf(everything), err)
	}
	delivered := false
	all6, _ := s.ListDeliveries(ctx, storage.DeliveryFilter{})
	for _, d := range all6 {
		if d.Target == "operator:a" && d.Event.ID == "evt_1" {
			delivered = d.State == storage.DeliveryDelivered && d.DeliveredAt != nil && d.LastStatus == 200
		}
	}
	if len(all6) != 6 || !delivered {
		t.Fatalf("admin view: %+v", all6)
	}

	// Pruning removes old events with their deliveries.
	if _, err := s.PruneOutbox(ctx, now.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if left, _ := s.ListDeliveries(ctx, storage.DeliveryFilter{}); len(left) != 6 {
		t.Fatalf("pruning before the events removed %d", 6-len(left))
	}
	if n, err := s.PruneOutbox(ctx, time.Now().Add(time.Hour)); err != nil || n != 3 {
		t.Fatalf("PruneOutbox = %d, %v; want 3 events", n, err)
	}
	if left, _ := s.ListDeliveries(ctx, storage.DeliveryFilter{}); len(left) != 0 {
		t.Fatalf("deliveries left after pruning: %v", targetsOf(left))
	}
	if due, _ := s.ClaimDeliveries(ctx, now.Add(time.Hour), time.Minute, 100); len(due) != 0 {
		t.Fatalf("pruned deliveries still due: %v", targetsOf(due))
	}
}

// sharedOutboxClaims: two handles claiming at once never get the same
// delivery, and together get them all.
func sharedOutboxClaims(t *testing.T, a, b storage.Store) {
	ctx := context.Background()
	u, _ := Register(t, a, "claims@example.com", 10)
	var evs []storage.OutboxEvent
	const n = 60
	for i := range n {
		evs = append(evs, outboxEvent(fmt.Sprintf("evt_%d", i), "balance.low", u.ID, "operator:x"))
	}
	if err := a.AppendEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	now := time.Now().Add(time.Second)
	for _, s := range []storage.Store{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ds, err := s.ClaimDeliveries(ctx, now, time.Hour, 7)
				if err != nil {
					t.Error(err)
					return
				}
				if len(ds) == 0 {
					return
				}
				mu.Lock()
				for _, d := range ds {
					seen[d.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("claimed %d distinct deliveries, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("delivery %d claimed %d times", id, c)
		}
	}
}
