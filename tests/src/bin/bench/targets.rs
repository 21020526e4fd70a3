//! Issue 15's targets, checked against the run's own figures: the table the
//! bench prints last, one line per target whose scenario ran.

/// What a run measured towards the targets; `None` where the scenario did
/// not run (or ran without the raw broker to compare with).
#[derive(Debug, Default)]
pub(crate) struct Targets {
    /// `publish_many` against the raw publisher of the same rounds.
    pub(crate) publisher: Option<f64>,
    /// Each round's ratio to the ceiling measured right before it.
    pub(crate) cli: Vec<f64>,
    pub(crate) batch1: Vec<f64>,
    pub(crate) batch100: Vec<f64>,
    /// p99 in ms at 1,000 events/s.
    pub(crate) p99_ms: Option<f64>,
    /// The healthy endpoint's rate beside the hanging one, over its rate alone.
    pub(crate) noisy: Option<f64>,
    /// 10,000 endpoints: peak RSS (MiB), one scrape's series and bytes.
    pub(crate) scale: Option<Scale>,
}

/// The scale scenario's figures the targets name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    pub(crate) endpoints: usize,
    pub(crate) rss_mib: Option<f64>,
    pub(crate) series: usize,
    pub(crate) bytes: usize,
}

/// The middle value (the mean of the two middle ones for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some(f64::midpoint(v[n / 2 - 1], v[n / 2])),
    }
}

/// One target's line: its name, the goal, what was measured, met or not.
#[derive(Debug, PartialEq)]
pub(crate) struct Line {
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: bool,
}

impl Targets {
    /// The lines for every target this run measured.
    pub(crate) fn lines(&self) -> Vec<Line> {
        let mut lines = Vec::new();
        let mut at_least = |target: &str, value: Option<f64>, rounds: &[f64], goal: f64| {
            let Some(value) = value else { return };
            let measured = if rounds.len() > 1 {
                let each = rounds
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("{value:.3} (median of {each})")
            } else {
                format!("{value:.3}")
            };
            lines.push(Line {
                target: format!("{target} ≥ {goal:.2}"),
                measured,
                met: value >= goal,
            });
        };
        at_least(
            "`publish_many` against a raw publisher",
            self.publisher,
            &[],
            0.85,
        );
        at_least(
            "CLI path (`publish --count` → dispatcher, batch 100) against the raw broker",
            median(&self.cli),
            &self.cli,
            0.70,
        );
        at_least(
            "batch 1 against the raw broker",
            median(&self.batch1),
            &self.batch1,
            0.60,
        );
        at_least(
            "batch 100 against the raw broker",
            median(&self.batch100),
            &self.batch100,
            0.75,
        );
        at_least(
            "noisy neighbour: the healthy endpoint's rate against its rate alone",
            self.noisy,
            &[],
            0.90,
        );
        if let Some(p99) = self.p99_ms {
            lines.push(Line {
                target: "p99 at 1,000 events/s ≤ 10 ms".to_owned(),
                measured: format!("{p99:.1} ms"),
                met: p99 <= 10.0,
            });
        }
        if let Some(s) = self.scale {
            lines.push(Line {
                target: format!("{} endpoints: dispatcher peak RSS ≤ 256 MiB", s.endpoints),
                measured: s
                    .rss_mib
                    .map_or_else(|| "unknown".to_owned(), |r| format!("{r:.1} MiB")),
                met: s.rss_mib.is_some_and(|r| r <= 256.0),
            });
            lines.push(Line {
                target: format!(
                    "{} endpoints: one /metrics scrape < 100,000 series and < 10 MB",
                    s.endpoints
                ),
                measured: format!("{} series, {:.1} MB", s.series, s.bytes as f64 / 1e6),
                met: s.series < 100_000 && s.bytes < 10_000_000,
            });
        }
        lines
    }

    /// Prints the targets table (nothing when no target was measured).
    pub(crate) fn print(&self) {
        let lines = self.lines();
        if lines.is_empty() {
            return;
        }
        println!("\nTargets (issue 15), this run:\n");
        println!("| target | measured | met |");
        println!("|---|---|---|");
        for l in &lines {
            println!(
                "| {} | {} | {} |",
                l.target,
                l.measured,
                if l.met { "yes" } else { "**no**" }
            );
        }
        let met = lines.iter().filter(|l| l.met).count();
        println!("\n{met} of {} targets met.", lines.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.7, 0.5, 0.6]), Some(0.6));
        assert_eq!(median(&[0.5, 0.7]), Some(0.6));
    }

    #[test]
    fn lines_only_for_what_ran_and_each_against_its_goal() {
        let t = Targets {
            batch1: vec![0.55, 0.62, 0.61],
            p99_ms: Some(10.5),
            ..Targets::default()
        };
        let lines = t.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].target, "batch 1 against the raw broker ≥ 0.60");
        assert_eq!(lines[0].measured, "0.610 (median of 0.550, 0.620, 0.610)");
        assert!(lines[0].met);
        assert!(!lines[1].met, "10.5 ms is over 10 ms");
    }

    #[test]
    fn scale_needs_both_the_series_and_the_bytes_under_their_caps() {
        let t = Targets {
            scale: Some(Scale {
                endpoints: 10_000,
                rss_mib: Some(221.7),
                series: 90_078,
                bytes: 10_000_000,
            }),
            ..Targets::default()
        };
        let lines = t.lines();
        assert!(lines[0].met);
        assert!(!lines[1].met, "10 MB is not under 10 MB");
    }
}
