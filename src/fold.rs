//! Folding a log line that repeats: at most one line per window, carrying how many
//! occurrences since the previous line were folded into it, so a burst (a full Redis, an
//! overload) costs a few lines instead of one per event. Lock-free: a refusal flood is when it
//! runs most.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a folded line may be written: once a second.
pub const FOLD_WINDOW: Duration = Duration::from_secs(1);

/// Where the windows are counted from (any fixed instant of the process).
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// One kind of repeated line: lets one through per [`FOLD_WINDOW`], counts the others.
#[derive(Debug, Default)]
pub struct LogFold {
    /// When the next line may be written, milliseconds after [`ORIGIN`].
    next_line_ms: AtomicU64,
    /// Occurrences folded since the last line written.
    folded: AtomicU64,
}

impl LogFold {
    /// A fold whose first occurrence is written.
    pub fn new() -> LogFold {
        LogFold::default()
    }

    /// One occurrence at `now`. `Some(n)`: write the line now, saying that `n` earlier
    /// occurrences were folded into it; `None`: this one is folded (counted for the next line).
    /// Every occurrence is either written or counted exactly once, whatever the concurrency.
    pub fn occurred(&self, now: Instant) -> Option<u64> {
        let now_ms = now.saturating_duration_since(*ORIGIN).as_millis() as u64;
        let due = self.next_line_ms.load(Ordering::Relaxed);
        let window = FOLD_WINDOW.as_millis() as u64;
        if now_ms >= due
            && self
                .next_line_ms
                .compare_exchange(due, now_ms + window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.folded.swap(0, Ordering::Relaxed));
        }
        self.folded.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_window_and_the_count_adds_up() {
        let fold = LogFold::new();
        let start = *ORIGIN + Duration::from_secs(10);
        // A burst of 1000 in the first 900 ms: one line, the rest folded.
        let lines: Vec<u64> = (0..1000)
            .filter_map(|i| fold.occurred(start + Duration::from_micros(900 * i)))
            .collect();
        assert_eq!(lines, [0]);
        // Still inside the window: folded.
        assert_eq!(fold.occurred(start + Duration::from_millis(999)), None);
        // The next window's first occurrence carries the 1000 folded ones.
        assert_eq!(fold.occurred(start + FOLD_WINDOW), Some(1000));
        assert_eq!(fold.occurred(start + FOLD_WINDOW * 3), Some(0));
    }

    #[test]
    fn concurrent_occurrences_are_each_written_or_counted_once() {
        let fold = std::sync::Arc::new(LogFold::new());
        let at = *ORIGIN + Duration::from_secs(5);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let fold = fold.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .filter_map(|_| fold.occurred(at))
                        .map(|n| n + 1)
                        .sum::<u64>()
                })
            })
            .collect();
        let written: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let rest = fold.occurred(at + FOLD_WINDOW).unwrap();
        assert_eq!(written + rest, 40_000);
    }
}
