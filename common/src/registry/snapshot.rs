//! Snapshots of the control stream, the pure part: the records a snapshot is
//! written as, when a reader writes one, and [`Replay`], the reader's state
//! machine that turns the records it receives into the state, starting from a
//! snapshot instead of the stream's first record. The broker side (pointer
//! queue, consumer, publishing) is in [`super::control`].
//!
//! A snapshot of the state as of stream offset `base` is written into the
//! stream itself, after `base`: `snapshot_begin{id, base}`, then
//! `snapshot_part{id, seq}` records holding the endpoints (whole, versions
//! included) and holds, then `snapshot_end{id, parts}`. Other writers may
//! append between them. A reader that starts at offset `base + 1` buffers
//! what it reads until that snapshot is complete, takes the snapshot as the
//! state, then applies, in order, the buffered records (all after `base`)
//! and everything later. A snapshot without its end (its writer crashed), or
//! with a missing part, is never used; snapshot records never change the
//! state of a reader that already has it, so concurrent snapshot writers are
//! harmless.

use super::StoredEndpoint;
use super::control::{Command, State, apply};
use super::tokens::StoredToken;
use std::collections::HashMap;
use std::sync::Arc;

/// Endpoints or holds per `snapshot_part` record: small records, each well
/// under the broker's message size limit.
pub const PART_ITEMS: usize = 100;

/// Changes after a snapshot that make a reader write a new one, at least.
pub const MIN_CHANGES: u64 = 1000;

/// The records of a snapshot `id` of `state` as of stream offset `base`.
/// Markers are not state: a snapshot never carries them.
pub fn records(id: &str, base: u64, at: &str, state: &State) -> Vec<Command> {
    let endpoints: Vec<&StoredEndpoint> = state.endpoints.values().map(|e| &**e).collect();
    let holds: Vec<&String> = state.holds.iter().collect();
    let tokens: Vec<&StoredToken> = state.tokens.values().collect();
    let mut parts = Vec::new();
    for chunk in endpoints.chunks(PART_ITEMS) {
        parts.push((
            chunk.iter().map(|e| (*e).clone()).collect(),
            Vec::new(),
            Vec::new(),
        ));
    }
    for chunk in holds.chunks(PART_ITEMS) {
        parts.push((
            Vec::new(),
            chunk.iter().map(|h| (*h).clone()).collect(),
            Vec::new(),
        ));
    }
    for chunk in tokens.chunks(PART_ITEMS) {
        parts.push((
            Vec::new(),
            Vec::new(),
            chunk.iter().map(|t| (*t).clone()).collect(),
        ));
    }
    let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(parts.len() + 2);
    out.push(Command::SnapshotBegin {
        id: id.to_owned(),
        base,
        at: at.to_owned(),
    });
    for (seq, (endpoints, holds, tokens)) in parts.into_iter().enumerate() {
        out.push(Command::SnapshotPart {
            id: id.to_owned(),
            seq: u32::try_from(seq).unwrap_or(u32::MAX),
            endpoints,
            holds,
            tokens,
        });
    }
    out.push(Command::SnapshotEnd {
        id: id.to_owned(),
        parts: count,
    });
    out
}

/// Whether a reader that has read `changes` records since the snapshot its
/// state starts from should write a new one: past `max(1000, 2 × entries)`
/// (entries: endpoints + holds), stretched by `jitter` (0 to 0.5, each
/// reader its own) so that readers following the same stream do not all
/// write one at the same record. A start then reads the snapshot plus at
/// most about that many changes: in proportion to the state, not the history.
pub fn due(changes: u64, state: &State, jitter: f64) -> bool {
    let entries = (state.endpoints.len() + state.holds.len() + state.tokens.len()) as u64;
    let threshold = MIN_CHANGES.max(entries.saturating_mul(2));
    let stretched = (threshold as f64 * (1.0 + jitter.clamp(0.0, 0.5))) as u64;
    changes >= stretched
}

/// Whether a record belongs to a snapshot (it never changes a reader's state
/// once the reader has one).
pub fn is_snapshot_record(command: &Command) -> bool {
    matches!(
        command,
        Command::SnapshotBegin { .. } | Command::SnapshotPart { .. } | Command::SnapshotEnd { .. }
    )
}

/// A snapshot being read.
#[derive(Debug)]
struct Partial {
    base: u64,
    next_seq: u32,
    broken: bool,
    state: State,
}

/// Where a reader's replay started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The stream's first record (offset 0): the state starts empty.
    First,
    /// Offset `base + 1` of a snapshot pointer: the state starts with a
    /// complete snapshot as of `base` or later.
    After(u64),
}

/// What one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to the state; `true` if it changed it.
    Applied(bool),
    /// Kept until the state is known (the snapshot is still being read).
    Buffered,
    /// A snapshot completed and is now the state (with the buffered records
    /// after it applied).
    Loaded,
    /// Nothing to do (before the start, another snapshot's record, ...).
    Ignored,
}

/// A reader's replay of the control stream.
#[derive(Debug)]
pub struct Replay {
    start: Start,
    first: Option<u64>,
    state: Option<State>,
    tail: Vec<(u64, Command)>,
    loading: HashMap<String, Partial>,
    /// Records received (every kind), for [`super::control::ReadStats`].
    pub records: u64,
    /// Records other than snapshots' since the snapshot (or the start of the
    /// stream) the state builds on: what the next reader will read on top
    /// of a snapshot.
    pub changes: u64,
    /// The snapshot the state was loaded from, if any.
    pub loaded: Option<String>,
}

impl Replay {
    /// A replay starting at `start`.
    pub fn new(start: Start) -> Self {
        Self {
            start,
            first: None,
            state: None,
            tail: Vec::new(),
            loading: HashMap::new(),
            records: 0,
            changes: 0,
            loaded: None,
        }
    }

    /// The state, once known.
    pub fn state(&self) -> Option<&State> {
        self.state.as_ref()
    }

    /// The first offset read at or after the start: greater than the start
    /// when retention removed records the reader needed (then only a newer
    /// complete snapshot can give the state).
    pub fn gap(&self) -> Option<(u64, u64)> {
        let wanted = match self.start {
            Start::First => 0,
            Start::After(base) => base + 1,
        };
        self.first.filter(|f| *f > wanted).map(|f| (wanted, f))
    }

    /// Takes the record at `offset`.
    pub fn push(&mut self, offset: u64, command: Command) -> Outcome {
        self.records += 1;
        let from = match self.start {
            Start::First => 0,
            Start::After(base) => base + 1,
        };
        // A consumer attached at an offset may get the rest of the chunk
        // before it.
        if offset < from {
            return Outcome::Ignored;
        }
        if self.first.is_none() {
            self.first = Some(offset);
            if self.start == Start::First && offset == 0 {
                self.state = Some(State::default());
            }
        }
        if let Some(state) = &mut self.state {
            if is_snapshot_record(&command) {
                // Someone else's snapshot: the next reader may start there.
                if self.track_other(&command) {
                    self.changes = 0;
                }
                return Outcome::Ignored;
            }
            self.changes += 1;
            return Outcome::Applied(apply(state, &command));
        }
        match command {
            Command::SnapshotBegin { id, base, .. } => {
                self.loading.insert(
                    id,
                    Partial {
                        base,
                        next_seq: 0,
                        broken: false,
                        state: State::default(),
                    },
                );
                Outcome::Ignored
            }
            Command::SnapshotPart {
                id,
                seq,
                endpoints,
                holds,
                tokens,
            } => {
                if let Some(p) = self.loading.get_mut(&id) {
                    if seq == p.next_seq && !p.broken {
                        p.next_seq += 1;
                        p.state
                            .endpoints
                            .extend(endpoints.into_iter().map(|e| (e.id.clone(), Arc::new(e))));
                        p.state.holds.extend(holds);
                        p.state
                            .tokens
                            .extend(tokens.into_iter().map(|t| (t.id.clone(), t)));
                    } else {
                        p.broken = true;
                    }
                }
                Outcome::Ignored
            }
            Command::SnapshotEnd { id, parts } => {
                let Some(p) = self.loading.remove(&id) else {
                    return Outcome::Ignored;
                };
                let first = self.first.unwrap_or(offset);
                // Usable if whole and if every record after its base is
                // read here (none removed by retention in between).
                if p.broken || p.next_seq != parts || p.base + 1 < first {
                    return Outcome::Ignored;
                }
                let mut state = p.state;
                self.changes = 0;
                for (o, c) in std::mem::take(&mut self.tail) {
                    if o > p.base && !is_snapshot_record(&c) {
                        apply(&mut state, &c);
                        self.changes += 1;
                    }
                }
                self.state = Some(state);
                self.loading.clear();
                self.loaded = Some(id);
                Outcome::Loaded
            }
            other => {
                self.tail.push((offset, other));
                Outcome::Buffered
            }
        }
    }

    /// Tracks another writer's snapshot while the state is known; `true`
    /// when one completed (a reader could now start from it).
    fn track_other(&mut self, command: &Command) -> bool {
        match command {
            Command::SnapshotBegin { id, base, .. } => {
                self.loading.insert(
                    id.clone(),
                    Partial {
                        base: *base,
                        next_seq: 0,
                        broken: false,
                        state: State::default(),
                    },
                );
                false
            }
            Command::SnapshotPart { id, seq, .. } => {
                if let Some(p) = self.loading.get_mut(id) {
                    if *seq == p.next_seq {
                        p.next_seq += 1;
                    } else {
                        p.broken = true;
                    }
                }
                false
            }
            Command::SnapshotEnd { id, parts } => self
                .loading
                .remove(id)
                .is_some_and(|p| !p.broken && p.next_seq == *parts),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, version: u64) -> StoredEndpoint {
        StoredEndpoint::sample(id, version)
    }

    fn put(id: &str, version: u64) -> Command {
        Command::Put {
            endpoint: stored(id, version),
        }
    }

    /// The state after `commands` applied from the start.
    fn replayed(commands: &[Command]) -> State {
        let mut state = State::default();
        for c in commands {
            apply(&mut state, c);
        }
        state
    }

    fn sample(n: usize) -> State {
        let mut commands = Vec::new();
        for i in 0..n {
            commands.push(put(&format!("e{i}"), 1));
            commands.push(put(&format!("e{i}"), 2));
            if i % 3 == 0 {
                commands.push(Command::hold(&format!("e{i}"), true));
            }
        }
        commands.push(Command::hold("file-only", true));
        for i in 0..n / 20 {
            let (_, token) = crate::registry::tokens::mint(&format!("t{}", i % 10)).unwrap();
            commands.push(Command::mint(&token));
        }
        replayed(&commands)
    }

    /// Feeds `records` at offsets from `from`.
    fn feed(replay: &mut Replay, from: u64, records: Vec<Command>) -> Vec<Outcome> {
        records
            .into_iter()
            .enumerate()
            .map(|(i, c)| replay.push(from + i as u64, c))
            .collect()
    }

    #[test]
    fn a_snapshot_round_trips_the_whole_state_in_small_parts() {
        let state = sample(250);
        let records = records("s", 41, "t", &state);
        let parts = records.len() - 2;
        assert_eq!(
            parts,
            3 + 1 + 1,
            "250 endpoints in 3 parts, 84 holds in 1, 12 tokens in 1"
        );
        assert!(matches!(
            records[0],
            Command::SnapshotBegin { base: 41, .. }
        ));
        assert!(matches!(
            records.last(),
            Some(Command::SnapshotEnd { parts: 5, .. })
        ));
        let mut replay = Replay::new(Start::After(41));
        let outcomes = feed(&mut replay, 42, records);
        assert_eq!(outcomes.last(), Some(&Outcome::Loaded));
        assert_eq!(state.tokens.len(), 12);
        assert_eq!(
            replay.state(),
            Some(&state),
            "versions, holds and tokens kept"
        );
        assert_eq!(replay.loaded.as_deref(), Some("s"));
        assert_eq!(replay.changes, 0);
    }

    #[test]
    fn an_empty_state_is_a_complete_snapshot_too() {
        let records = records("s", 0, "t", &State::default());
        assert_eq!(records.len(), 2);
        let mut replay = Replay::new(Start::After(0));
        feed(&mut replay, 1, records);
        assert_eq!(replay.state(), Some(&State::default()));
    }

    #[test]
    fn changes_written_during_the_snapshot_are_applied_on_top_of_it() {
        // The writer read up to offset 9; a Put, a Pause and a Delete land
        // between its records.
        let state = sample(150);
        let mut snap = records("s", 9, "t", &state);
        let end = snap.pop().unwrap();
        let mut stream = vec![put("late", 1), snap.remove(0)];
        stream.push(Command::hold("e1", true));
        stream.append(&mut snap);
        stream.push(put("e0", 3));
        stream.push(Command::Delete {
            id: "e2".into(),
            at: String::new(),
        });
        stream.push(end);
        stream.push(put("after", 1));
        let mut replay = Replay::new(Start::After(9));
        let outcomes = feed(&mut replay, 10, stream.clone());
        assert!(outcomes.contains(&Outcome::Loaded));
        let mut expected = state;
        for c in &stream {
            if !is_snapshot_record(c) {
                apply(&mut expected, c);
            }
        }
        assert_eq!(replay.state(), Some(&expected));
        assert_eq!(replay.state().unwrap().endpoints["e0"].version, 3);
        assert!(replay.state().unwrap().endpoints.contains_key("late"));
        assert!(!replay.state().unwrap().endpoints.contains_key("e2"));
        assert_eq!(replay.changes, 5);
    }

    #[test]
    fn a_half_written_or_broken_snapshot_is_never_used() {
        let state = sample(150);
        let mut replay = Replay::new(Start::After(0));
        let mut half = records("crashed", 0, "t", &state);
        half.pop();
        let mut gap = records("gap", 0, "t", &state);
        gap.remove(2);
        let mut stream = half;
        stream.extend(gap);
        stream.push(put("x", 1));
        for o in feed(&mut replay, 1, stream) {
            assert_ne!(o, Outcome::Loaded);
        }
        assert_eq!(replay.state(), None, "no complete snapshot yet");
        let good = records("good", 0, "t", &state);
        let n = replay.records;
        feed(&mut replay, 1 + n, good);
        let mut expected = state.clone();
        apply(&mut expected, &put("x", 1));
        assert_eq!(replay.state(), Some(&expected));
        assert_eq!(replay.loaded.as_deref(), Some("good"));
    }

    #[test]
    fn snapshot_records_never_change_a_known_state() {
        // From the stream's start, an old snapshot's Puts and holds must not
        // resurrect what was deleted or resumed since.
        let old = replayed(&[
            put("a", 1),
            put("a", 2),
            put("a", 3),
            Command::hold("a", true),
        ]);
        let mut stream = vec![
            put("a", 1),
            put("a", 2),
            put("a", 3),
            Command::hold("a", true),
        ];
        stream.push(Command::Delete {
            id: "a".into(),
            at: String::new(),
        });
        stream.push(Command::hold("a", false));
        stream.push(put("a", 1));
        stream.push(put("a", 2));
        stream.extend(records("late-writer", 3, "t", &old));
        let mut replay = Replay::new(Start::First);
        feed(&mut replay, 0, stream);
        let state = replay.state().unwrap();
        assert_eq!(state.endpoints["a"].version, 2);
        assert!(state.holds.is_empty());
        assert_eq!(replay.changes, 0, "a completed snapshot resets the count");
    }

    #[test]
    fn a_snapshot_older_than_what_was_read_is_not_used() {
        // Retention removed offsets 1..=4: a snapshot as of 0 misses them.
        let state = sample(3);
        let mut replay = Replay::new(Start::After(0));
        let mut stream = records("old", 0, "t", &state);
        stream.push(put("z", 1));
        feed(&mut replay, 5, stream);
        assert_eq!(replay.gap(), Some((1, 5)));
        assert_eq!(replay.state(), None);
        feed(&mut replay, 20, records("new", 19, "t", &state));
        assert_eq!(replay.state(), Some(&state));
    }

    #[test]
    fn from_the_first_record_the_state_starts_empty_unless_history_was_cut() {
        let mut replay = Replay::new(Start::First);
        assert_eq!(replay.push(0, put("a", 1)), Outcome::Applied(true));
        assert_eq!(replay.state().unwrap().endpoints.len(), 1);
        let mut cut = Replay::new(Start::First);
        assert_eq!(cut.push(7, put("a", 2)), Outcome::Buffered);
        assert_eq!(cut.state(), None);
        assert_eq!(cut.gap(), Some((0, 7)));
    }

    #[test]
    fn records_before_the_start_are_skipped() {
        let mut replay = Replay::new(Start::After(9));
        assert_eq!(replay.push(8, put("a", 1)), Outcome::Ignored);
        assert_eq!(replay.gap(), None);
    }

    #[test]
    fn a_snapshot_is_due_past_max_1000_or_twice_the_entries() {
        let small = sample(10);
        assert!(!due(999, &small, 0.0));
        assert!(due(1000, &small, 0.0));
        assert!(!due(1400, &small, 0.5), "jitter stretches it");
        assert!(due(1500, &small, 0.5));
        let big = sample(3000); // 3000 endpoints + 1001 holds + 150 tokens
        assert!(!due(8301, &big, 0.0));
        assert!(due(8302, &big, 0.0));
    }
}
