package repair

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// fence is one leadership term: the election key and its create revision.
// Every effect that must not come from a deposed leader checks it first.
type fence struct {
	cli *clientv3.Client
	key string
	rev int64
}

// cmp is true while the term lasts: the election key still exists with the
// create revision it had when the term began.
func (f *fence) cmp() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev)
}

// check returns nil if the term still lasts, errLostLeadership if not, or
// the error of etcd. It is a linearizable read-only transaction.
func (f *fence) check(ctx context.Context) error {
	resp, err := f.cli.Txn(ctx).If(f.cmp()).Commit()
	if err != nil {
		return fmt.Errorf("repair: check leadership: %w", err)
	}
	if !resp.Succeeded {
		return errLostLeadership
	}
	return nil
}

// put writes key = val if the term still lasts, else returns
// errLostLeadership.
func (f *fence) put(ctx context.Context, key string, val []byte) error {
	resp, err := f.cli.Txn(ctx).If(f.cmp()).Then(clientv3.OpPut(key, string(val))).Commit()
	if err != nil {
		return fmt.Errorf("repair: write %s: %w", key, err)
	}
	if !resp.Succeeded {
		return errLostLeadership
	}
	return nil
}

// term runs one session: it campaigns, and while leader runs passes until
// ctx ends or leadership is lost. It releases the session before returning.
func (w *Worker) term(ctx context.Context) error {
	ttl := int((w.cfg.SessionTTL + time.Second - 1) / time.Second)
	sess, err := concurrency.NewSession(w.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("repair: start election session: %w", err)
	}
	defer w.release(ctx, sess)

	// sess.Ctx ends with ctx and when the lease is lost.
	el := concurrency.NewElection(sess, w.electionKey())
	if err := el.Campaign(sess.Ctx(), w.cfg.Name); err != nil {
		if sess.Ctx().Err() != nil {
			return errLostLeadership
		}
		return fmt.Errorf("repair: campaign: %w", err)
	}
	f := &fence{cli: w.cli, key: el.Key(), rev: el.Rev()}
	tctx, cancel := context.WithCancelCause(sess.Ctx())
	defer cancel(nil)
	return w.lead(tctx, cancel, f)
}

// release ends sess and deletes its election key (by revoking its lease), so
// that another worker takes over without waiting for the lease to expire.
func (w *Worker) release(ctx context.Context, sess *concurrency.Session) {
	sess.Orphan()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := w.cli.Revoke(rctx, sess.Lease()); err != nil {
		w.log.Debug().Err(err).Msg("revoke repair election lease; it will expire")
	}
}

// lead runs passes while the term f lasts; ctx is the term's context and
// cancel ends it with a cause.
func (w *Worker) lead(ctx context.Context, cancel context.CancelCauseFunc, f *fence) error {
	last, err := w.State(ctx)
	if err != nil {
		return err
	}
	w.log.Info().Uint64("last_pass", last.Pass).Msg("repair leader")
	w.update(func(p *Progress) {
		*p = last // the last leader's record, until the first pass starts
		p.Running = false
	})
	defer w.update(func(p *Progress) { p.Running = false })

	select {
	case <-w.kick: // a Kick while following: the first pass is now anyway
	default:
	}
	pass := last.Pass
	for {
		pass++
		res := w.pass(ctx, cancel, f, pass)
		if ctx.Err() != nil {
			return ended(ctx)
		}
		wait := w.cfg.Interval
		if res.again {
			wait = 0
		}
		if !res.graceEnd.IsZero() {
			wait = min(wait, max(res.graceEnd.Sub(w.now()), 0))
		}
		if !w.idle(ctx, wait) {
			return ended(ctx)
		}
	}
}

// ended returns why the term of the ended context ctx ended: the cause given
// to its cancel, or errLostLeadership when the session ended (its lease was
// lost or Run's context is done).
func ended(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return errLostLeadership
}

// idle waits d, or until Kick; it returns false if ctx ends first.
func (w *Worker) idle(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-w.kick:
	}
	return true
}

// writeState writes the worker's progress to etcd under the fence.
func (w *Worker) writeState(ctx context.Context, f *fence) error {
	b, err := json.Marshal(w.Progress())
	if err != nil {
		return fmt.Errorf("repair: encode state: %w", err)
	}
	return f.put(ctx, w.stateKey(), b)
}
