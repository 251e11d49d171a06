//! The socket's task: the driver and the application's handler, polled together.
//!
//! The two talk through shared queues and wake each other for every message: the driver
//! wakes the handler when a message arrives, the handler wakes the driver when it sends.
//! With `futures::join` each of those wakes is the task waking itself, which tokio answers
//! by rescheduling it (and, on the multi-threaded runtime, by unparking another worker to
//! steal it: two futex calls a message). [`Joined`] gives both a waker of its own instead:
//! a wake while it is polling them only asks for one more round, and only a wake from
//! outside (the connection, a timer, another task's send) wakes the task.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::{
    future::{MaybeDone, maybe_done},
    task::AtomicWaker,
};
use pin_project_lite::pin_project;

/// Rounds in one poll before yielding to the runtime (a wake is then passed on).
const ROUNDS: usize = 16;

pin_project! {
    /// Polls `a` and `b` to completion, in rounds, without waking the task for wakes that
    /// happen while it polls them.
    pub(crate) struct Joined<A: Future, B: Future> {
        #[pin]
        a: MaybeDone<A>,
        #[pin]
        b: MaybeDone<B>,
        local: Arc<LocalWake>,
        waker: Waker,
    }
}

#[derive(Default)]
struct LocalWake {
    /// The task's waker, for wakes from outside.
    parent: AtomicWaker,
    /// A round of polling is under way: wakes only set `woken`.
    polling: AtomicBool,
    /// Woken since the current round began.
    woken: AtomicBool,
}

impl Wake for LocalWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.parent.wake();
        }
    }
}

impl<A, B> Joined<A, B>
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    pub(crate) fn new(a: A, b: B) -> Self {
        let local = Arc::new(LocalWake::default());
        Self {
            a: maybe_done(a),
            b: maybe_done(b),
            waker: Waker::from(local.clone()),
            local,
        }
    }
}

impl<A, B> Future for Joined<A, B>
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        this.local.parent.register(cx.waker());
        this.local.polling.store(true, Ordering::SeqCst);
        let mut local = Context::from_waker(this.waker);
        for _ in 0..ROUNDS {
            this.local.woken.store(false, Ordering::SeqCst);
            // `MaybeDone` keeps a finished future's output and is not polled again.
            let a = this.a.as_mut().poll(&mut local).is_ready();
            let b = this.b.as_mut().poll(&mut local).is_ready();
            if a && b {
                this.local.polling.store(false, Ordering::SeqCst);
                return Poll::Ready(());
            }
            if !this.local.woken.load(Ordering::SeqCst) {
                break;
            }
        }
        this.local.polling.store(false, Ordering::SeqCst);
        // Woken during the last round (out of rounds), or just after it by someone who saw
        // it under way: poll again later.
        if this.local.woken.swap(false, Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::poll_fn,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Poll, Wake, Waker},
    };

    use super::Joined;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_while_polling_are_rounds_not_task_wakes() {
        use std::sync::Mutex;

        // `a` waits for a message from `b`, `b` sends one then waits for the answer: each
        // wakes the other while being polled.
        /// Messages in flight, and the wakers of `a` and `b`.
        type Slot = Mutex<(Vec<u32>, Option<Waker>, Option<Waker>)>;
        let slot: Arc<Slot> = Arc::default();
        let (sa, sb) = (slot.clone(), slot.clone());
        let mut sent = false;
        let a = poll_fn(move |cx| {
            let mut s = sa.lock().unwrap();
            if let Some(n) = s.0.pop() {
                s.0.insert(0, n + 100);
                if let Some(w) = s.2.take() {
                    w.wake();
                }
                return Poll::Ready(());
            }
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        });
        let b = poll_fn(move |cx| {
            let mut s = sb.lock().unwrap();
            if !sent {
                sent = true;
                s.0.push(1);
                if let Some(w) = s.1.take() {
                    w.wake();
                }
            } else if s.0.first() == Some(&101) {
                return Poll::Ready(());
            }
            s.2 = Some(cx.waker().clone());
            Poll::Pending
        });
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut joined = std::pin::pin!(Joined::new(a, b));
        assert!(joined.as_mut().poll(&mut cx).is_ready());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "no wake reached the task"
        );
    }

    #[test]
    fn a_wake_from_outside_wakes_the_task() {
        let stored: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
        let s = stored.clone();
        let a = poll_fn(move |cx| {
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut joined = std::pin::pin!(Joined::new(a, std::future::pending::<()>()));
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        stored.lock().unwrap().take().unwrap().wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_future_that_always_wakes_itself_yields_after_some_rounds() {
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        let a = poll_fn(move |cx| {
            p.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut joined = std::pin::pin!(Joined::new(a, std::future::pending::<()>()));
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), super::ROUNDS);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the task is woken to go on later"
        );
    }
}
