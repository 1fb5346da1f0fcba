//! Which priority the next delivery window is read from, when more than
//! one has events waiting: weighted fair queueing on raw bytes (each
//! priority's next window is placed at its virtual finish time, and the
//! earliest goes). Each priority level doubles the share (9 gets 2^(9-p)
//! times the bytes of p while both have a backlog), so a higher priority's
//! backlog goes first — priority 8 sends 64 windows before priority 2
//! sends its first — and lower ones still get their share: never starved. Within a priority the outbox's order holds, so
//! per-key order is untouched (a topic has one priority). Pure.

use crate::pattern::PRIORITY_LEVELS;

/// The stride of the highest priority per raw byte; priority `p` pays
/// `2^(9-p)` times as much.
fn stride(priority: u8) -> u64 {
    1 << (PRIORITY_LEVELS as u32 - 1 - u32::from(priority.min(9)))
}

#[derive(Debug, Clone)]
pub struct Schedule {
    /// Virtual time each priority has used.
    pass: [u64; PRIORITY_LEVELS],
    /// The raw bytes of a full window: where a priority's next window is
    /// expected to finish.
    window_bytes: u64,
}

impl Schedule {
    pub fn new(window_bytes: usize) -> Self {
        Self {
            pass: [0; PRIORITY_LEVELS],
            window_bytes: window_bytes.max(1) as u64,
        }
    }

    /// Priorities in the order to try: the earliest virtual finish of a
    /// full window first, the higher priority on a tie.
    pub fn order(&self) -> [u8; PRIORITY_LEVELS] {
        let mut order: [u8; PRIORITY_LEVELS] = std::array::from_fn(|p| p as u8);
        order.sort_by_key(|&p| {
            let finish = self.pass[p as usize].saturating_add(self.window_bytes * stride(p));
            (finish, std::cmp::Reverse(p))
        });
        order
    }

    /// A window of `raw_bytes` was read from `chosen`, tried in `order`:
    /// the priorities tried before it had nothing to send, and catch up so
    /// that being idle banks no credit for a later monopoly.
    pub fn charge(&mut self, order: &[u8; PRIORITY_LEVELS], chosen: u8, raw_bytes: usize) {
        let now = self.pass[chosen as usize];
        for &p in order.iter().take_while(|&&p| p != chosen) {
            let pass = &mut self.pass[p as usize];
            *pass = (*pass).max(now);
        }
        self.pass[chosen as usize] = now.saturating_add(raw_bytes.max(1) as u64 * stride(chosen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `windows` windows of `size` bytes with `backlogged` priorities
    /// always having events; how many each got.
    fn run(schedule: &mut Schedule, backlogged: &[u8], windows: usize) -> [usize; PRIORITY_LEVELS] {
        let mut got = [0; PRIORITY_LEVELS];
        for _ in 0..windows {
            let order = schedule.order();
            let chosen = *order.iter().find(|p| backlogged.contains(p)).unwrap();
            schedule.charge(&order, chosen, 64 * 1024);
            got[chosen as usize] += 1;
        }
        got
    }

    #[test]
    fn each_level_doubles_the_share_and_none_is_starved() {
        let got = run(&mut Schedule::new(64 * 1024), &[2, 8], 6_500);
        // 2^6 = 64 windows of priority 8 for each of priority 2.
        assert_eq!(got[8] + got[2], 6_500);
        assert!((99..=101).contains(&got[2]), "{got:?}");
        let got = run(&mut Schedule::new(64 * 1024), &[4, 5], 3_000);
        assert!((999..=1_001).contains(&got[4]), "{got:?}");
    }

    #[test]
    fn a_priority_that_was_idle_gets_its_share_not_a_monopoly() {
        let mut s = Schedule::new(64 * 1024);
        run(&mut s, &[5], 1_000);
        // Priority 3 was empty all along; now both have a backlog.
        let got = run(&mut s, &[3, 5], 500);
        assert!((95..=105).contains(&got[3]), "{got:?}");
    }

    #[test]
    fn a_higher_backlog_goes_first_and_the_lower_one_then_gets_its_turn() {
        let mut s = Schedule::new(64 * 1024);
        let mut sent = Vec::new();
        for _ in 0..66 {
            let order = s.order();
            let chosen = *order.iter().find(|p| [2, 8].contains(p)).unwrap();
            s.charge(&order, chosen, 64 * 1024);
            sent.push(chosen);
        }
        // 64 windows of 8 before the first of 2 (2^6 = 64 to 1).
        assert_eq!(sent.iter().position(|&p| p == 2), Some(64), "{sent:?}");
        assert_eq!(Schedule::new(1).order()[0], 9);
    }
}
