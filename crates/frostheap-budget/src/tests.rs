//! Unit tests of [`Budget`] and [`Permit`] together (beside neither, so
//! that neither file imports the other's tests' needs).

mod budget {
    use crate::*;
    use frostheap::{Error, Heap};
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once(fut: &mut Acquire, wake: &Arc<CountWake>) -> Poll<Result<Permit, Error>> {
        let waker = Waker::from(wake.clone());
        let mut cx = Context::from_waker(&waker);
        Pin::new(fut).poll(&mut cx)
    }

    #[test]
    fn capacity_is_budget_over_per_client() {
        let b = Budget::with_per_client(256 << 20, PerClient::Declared(128 << 10)).unwrap();
        assert_eq!(b.capacity(128 << 10), 2048);
        assert_eq!(b.clients(), 2048);
        assert_eq!(b.capacity(0), 256 << 20);
        assert_eq!(b.to_string(), "256 MiB: 2,048 clients at ≈128 KiB each");
    }

    #[test]
    fn budget_smaller_than_one_client_is_refused() {
        let err = Budget::with_per_client(64 << 10, PerClient::Declared(128 << 10)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { name: "budget", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("128 KiB"), "{err}");
    }

    #[test]
    fn a_shrunk_permit_gives_its_bytes_back_to_the_waiters_first() {
        let b = Budget::new(1000);
        let p = b.try_acquire(900).unwrap();
        let wake = Arc::new(CountWake(AtomicUsize::new(0)));
        let mut waiter = b.acquire(500);
        assert!(poll_once(&mut waiter, &wake).is_pending());
        p.shrink_to(1000);
        assert_eq!(b.stats().in_use, 900, "no more than it holds: nothing");
        p.shrink_to(300);
        assert_eq!((p.bytes(), b.stats().in_use), (300, 300));
        let Poll::Ready(Ok(w)) = poll_once(&mut waiter, &wake) else {
            panic!("the waiter got the bytes given back")
        };
        assert_eq!(b.stats().in_use, 800);
        assert!(b.try_acquire(201).is_none());
        // It grows again, and gives back what it holds when dropped.
        assert!(p.try_grow(200));
        drop((p, w));
        let s = b.stats();
        assert_eq!((s.in_use, b.available()), (0, 1000));
    }

    #[test]
    fn a_suspended_permit_holds_nothing_and_resumes_by_waiting_in_line() {
        let b = Budget::new(1000);
        let p = b.try_acquire(600).unwrap();
        assert_eq!(p.suspend(), 600);
        assert_eq!(p.suspend(), 0, "suspended already");
        let s = b.stats();
        assert_eq!((s.in_use, s.clients, s.admitted), (0, 0, 1));
        let other = b.try_acquire(700).expect("the place it left is free");
        assert!(!p.try_resume(600));
        assert!(p.is_suspended());
        let waker = Waker::from(Arc::new(CountWake(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let mut resume = Box::pin(p.resume(600));
        assert!(resume.as_mut().poll(&mut cx).is_pending());
        assert_eq!(b.stats().waiting, 1);
        drop(other);
        assert!(matches!(resume.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        drop(resume);
        let s = b.stats();
        assert_eq!(
            (s.in_use, s.clients, s.admitted, s.waiting, s.refused),
            (600, 1, 2, 0, 1)
        );
        assert_eq!((p.bytes(), p.is_suspended()), (600, false));
        drop(p);
        assert_eq!((b.stats().in_use, b.stats().clients), (0, 0));
        // Dropped while suspended: counted out of `clients` once.
        let q = b.try_acquire(100).unwrap();
        q.suspend();
        drop(q);
        assert_eq!((b.stats().in_use, b.stats().clients), (0, 0));
    }

    #[test]
    fn permits_return_their_bytes_and_refuse_past_the_budget() {
        let b = Budget::new(1000);
        let p1 = b.try_acquire(600).unwrap();
        assert!(b.try_acquire(500).is_none());
        let p2 = b.try_acquire(400).unwrap();
        assert_eq!(b.available(), 0);
        let s = b.stats();
        assert_eq!(
            (s.in_use, s.clients, s.admitted, s.refused),
            (1000, 2, 2, 1)
        );
        let clone = p1.clone();
        drop(p1);
        assert_eq!(b.stats().in_use, 1000, "a clone keeps the bytes");
        drop(clone);
        drop(p2);
        let s = b.stats();
        assert_eq!(
            (s.in_use, s.clients, s.peak_in_use, s.peak_clients),
            (0, 0, 1000, 2)
        );
    }

    #[test]
    fn grow_and_reserve() {
        let b = Budget::new(1000);
        let r = b.try_reserve(300).unwrap();
        let p = b.try_acquire(500).unwrap();
        assert!(p.try_grow(200));
        assert!(!p.try_grow(1));
        assert_eq!(p.bytes(), 700);
        let s = b.stats();
        assert_eq!(
            (s.in_use, s.clients, s.admitted),
            (1000, 1, 1),
            "a reservation is not a client"
        );
        drop((r, p));
        assert_eq!(b.stats().in_use, 0);
    }

    #[test]
    fn a_budget_past_4_gib_is_still_one_acquisition() {
        let b = Budget::new((8 << 30) + 5);
        let all = b.try_acquire((8 << 30) + 5).expect("the whole budget fits");
        assert!(b.try_acquire(1).is_none());
        drop(all);
        let (p, q) = (b.try_acquire(3).unwrap(), b.try_acquire(1 << 30).unwrap());
        assert_eq!(b.stats().in_use, (1 << 30) + 3);
        assert!(b.try_acquire(8 << 30).is_none());
        drop((p, q));
        assert_eq!(
            b.available(),
            b.total() - b.total() % 3,
            "granules of 3 bytes"
        );
    }

    #[test]
    fn concurrent_admission_never_exceeds_the_budget() {
        let b = Budget::new(10_000);
        let over = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..4 {
                let (b, over) = (b.clone(), over.clone());
                s.spawn(move || {
                    for i in 0..20_000 {
                        if let Some(p) = b.try_acquire(100 + (i * 7 + t) % 900) {
                            if b.stats().in_use > 10_000 {
                                over.fetch_add(1, Ordering::Relaxed);
                            }
                            drop(p);
                        }
                    }
                });
            }
        });
        assert_eq!(over.load(Ordering::Relaxed), 0);
        let s = b.stats();
        assert_eq!((s.in_use, s.clients), (0, 0));
        assert!(s.peak_in_use <= 10_000);
        assert_eq!(s.admitted + s.refused, 80_000);
    }

    #[test]
    fn acquire_waits_in_fifo_order_and_is_woken_by_a_release() {
        let b = Budget::new(1000);
        let held = b.try_acquire(800).unwrap();
        let (w1, w2) = (
            Arc::new(CountWake(AtomicUsize::new(0))),
            Arc::new(CountWake(AtomicUsize::new(0))),
        );
        let mut a1 = b.acquire(500);
        let mut a2 = b.acquire(100);
        assert!(poll_once(&mut a1, &w1).is_pending());
        // 100 bytes would fit, but a2 queues behind a1 (no overtaking).
        assert!(poll_once(&mut a2, &w2).is_pending());
        assert_eq!(b.stats().waiting, 2);
        drop(held);
        assert_eq!(w1.0.load(Ordering::SeqCst), 1);
        assert_eq!(w2.0.load(Ordering::SeqCst), 1);
        let p1 = match poll_once(&mut a1, &w1) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("a1 not granted: {:?}", other.map(|r| r.map(|p| p.bytes()))),
        };
        let p2 = match poll_once(&mut a2, &w2) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("a2 not granted: {:?}", other.map(|r| r.map(|p| p.bytes()))),
        };
        let s = b.stats();
        assert_eq!((s.in_use, s.waited, s.waiting), (600, 2, 0));
        drop((p1, p2));
        assert_eq!(b.stats().in_use, 0);
    }

    #[test]
    fn a_cancelled_waiter_passes_its_grant_on() {
        let b = Budget::new(1000);
        let held = b.try_acquire(1000).unwrap();
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let mut a1 = b.acquire(1000);
        let mut a2 = b.acquire(1000);
        assert!(poll_once(&mut a1, &w).is_pending());
        assert!(poll_once(&mut a2, &w).is_pending());
        drop(held); // granted to a1 ...
        drop(a1); // ... which never takes it: a2 gets it.
        assert!(matches!(poll_once(&mut a2, &w), Poll::Ready(Ok(_))));
        assert_eq!(b.stats().in_use, 0, "a2's permit was dropped at once");
    }

    #[test]
    fn acquire_larger_than_the_budget_fails_at_once() {
        let b = Budget::new(1000);
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let mut a = b.acquire(1001);
        match poll_once(&mut a, &w) {
            Poll::Ready(Err(e)) => assert_eq!((e.requested(), e.limit()), (Some(1001), Some(1000))),
            _ => panic!("expected an error"),
        }
    }

    #[test]
    fn measured_cost_follows_recorded_usage() {
        let b = Budget::new(100 << 20);
        assert_eq!(b.per_client(), DEFAULT_PER_CLIENT);
        for _ in 0..200 {
            let p = b.try_acquire(64 << 10).unwrap();
            p.record_usage(20 << 10);
            p.record_usage(12 << 10);
        }
        // Constant usage: the deviation decays and the estimate converges.
        let est = b.per_client();
        assert!(((32 << 10)..(33 << 10)).contains(&est), "estimate {est}");
        assert_eq!(b.clients(), (100 << 20) / est);
        assert_eq!(b.stats().samples, 200);
        // A declared cost ignores measurements.
        b.set_per_client(PerClient::Declared(1 << 20)).unwrap();
        b.try_acquire(1).unwrap().record_usage(5);
        assert_eq!(b.per_client(), 1 << 20);
    }

    #[test]
    fn estimate_sits_above_the_mean_for_varied_usage() {
        let b = Budget::new(1 << 30);
        for i in 0..1000usize {
            let p = b.try_acquire(1).unwrap();
            // Alternating 10 KiB and 50 KiB: mean 30 KiB.
            p.record_usage(if i % 2 == 0 { 10 << 10 } else { 50 << 10 });
        }
        let est = b.per_client();
        assert!(
            est > 40 << 10,
            "estimate {est} should cover the heavy clients"
        );
    }

    #[test]
    #[allow(unsafe_code)] // frees the block it allocated
    fn from_heap_takes_the_room_under_the_limit() {
        let heap = Heap::builder()
            .name("budget-test")
            .max(8 << 20)
            .build()
            .unwrap();
        let block = heap
            .try_alloc(std::alloc::Layout::from_size_align(1 << 20, 8).unwrap())
            .unwrap();
        let b = Budget::from_heap(&heap);
        assert_eq!(b.total(), heap.limit() - heap.stats().in_use);
        assert!(b.total() <= 7 << 20);
        // SAFETY: `block` came from `heap` and is not used again.
        unsafe { heap.dealloc(block) };
    }

    #[test]
    fn thousands() {
        assert_eq!(Thousands(0).to_string(), "0");
        assert_eq!(Thousands(999).to_string(), "999");
        assert_eq!(Thousands(2048).to_string(), "2,048");
        assert_eq!(Thousands(1234567).to_string(), "1,234,567");
    }
}
