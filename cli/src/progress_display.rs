//! How `era5 sync` shows progress: a bar on a terminal, log lines, or NDJSON events
//! (`progress_events`).
//!
//! The bar always fits on one line of the terminal, whatever its width: a line that wraps is
//! redrawn badly. The layout is picked by width (a shorter bar, then fewer fields), every field
//! has a bounded width, and the status text goes last in indicatif's `{wide_msg}`, which is
//! truncated to whatever room is left. The width is read again on every redraw, so resizing
//! the terminal re-lays the bar out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::units::{counted, human_bytes};
use engine::scheduler::RequestScheduler;
use engine::{ConcurrencySnapshot, Progress, ProgressSnapshot};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle as BarStyle};
use tokio_util::sync::CancellationToken;
use transport::{ConnectionSnapshot, ConnectionStats};

use crate::config::ProgressStyle;

/// What a download's network looks like: its pool's connections and its request window.
pub struct Network {
    /// The pool's gauge.
    pub connections: Arc<ConnectionStats>,
    /// The engine's scheduler (the concurrency in use).
    pub scheduler: Arc<RequestScheduler>,
}

impl Network {
    fn snapshot(&self) -> (ConnectionSnapshot, ConcurrencySnapshot) {
        (self.connections.snapshot(), self.scheduler.snapshot())
    }
}

/// Shows progress until stopped.
pub struct Reporter {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// Starts showing `progress` in the given style, with the network's figures when there
    /// is one (`era5 verify` reads local files only).
    pub fn start(style: ProgressStyle, progress: Arc<Progress>, network: Option<Network>) -> Self {
        let stop = CancellationToken::new();
        let task =
            match style {
                ProgressStyle::Bar => tokio::spawn(show_bar(progress, network, stop.clone())),
                ProgressStyle::Lines(interval) => {
                    tokio::spawn(show_lines(progress, network, interval, stop.clone()))
                }
                ProgressStyle::Json(interval) => tokio::spawn(
                    crate::progress_events::report_totals(progress, interval, stop.clone()),
                ),
                ProgressStyle::Off => tokio::spawn(async {}),
            };
        Self { stop, task }
    }

    /// Stops and clears the display.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// How much the status text says, from most to least.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detail {
    Full,
    Short,
    Files,
    Count,
}

/// A bar layout: the template and how much status text follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    template: &'static str,
    detail: Detail,
}

/// The layout for a terminal `width` columns wide. The fixed part of each template is at most
/// (bar) + 23 (`1023.99 GiB/1023.99 GiB`) + 13 (`1023.99 MiB/s`) + 10 (ETA, e.g. `59 minutes`)
/// plus separators, which leaves `{wide_msg}` some room at every tier's smallest width.
fn layout(width: u16) -> Layout {
    match width {
        100.. => Layout {
            template: "{bar:20} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} | {wide_msg}",
            detail: Detail::Full,
        },
        72..=99 => Layout {
            template: "{bar:10} {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} {wide_msg}",
            detail: Detail::Short,
        },
        40..=71 => Layout {
            template: "{percent:>3}% {binary_bytes_per_sec} {eta} {wide_msg}",
            detail: Detail::Files,
        },
        _ => Layout {
            template: "{percent:>3}% {wide_msg}",
            detail: Detail::Count,
        },
    }
}

fn bar_style(layout: Layout) -> BarStyle {
    BarStyle::with_template(layout.template).unwrap_or_else(|_| BarStyle::default_bar())
}

fn status_message(
    snapshot: &ProgressSnapshot,
    network: Option<(ConnectionSnapshot, ConcurrencySnapshot)>,
    detail: Detail,
) -> String {
    let (done, total) = (snapshot.objects_done, snapshot.objects_total);
    match (detail, network) {
        (Detail::Full, Some((conns, window))) => format!(
            "files {done}/{total} | requests {}/{} | connections {} open | retries {}",
            window.in_flight,
            window.window,
            conns.open,
            snapshot.retries_total()
        ),
        (Detail::Short, Some((conns, window))) => format!(
            "{done}/{}, {}/{} reqs, {}, {}",
            counted(total, "file", "files"),
            window.in_flight,
            window.window,
            counted(conns.open as u64, "conn", "conns"),
            counted(snapshot.retries_total(), "retry", "retries")
        ),
        (Detail::Full | Detail::Short, None) => {
            format!("files {done}/{total}, {} failed", snapshot.objects_failed)
        }
        (Detail::Files, _) => format!("{done}/{}", counted(total, "file", "files")),
        (Detail::Count, _) => format!("{done}/{total}"),
    }
}

/// The terminal's width in columns, or 80 when stderr is not a terminal that says.
fn terminal_width() -> u16 {
    console::Term::stderr()
        .size_checked()
        .map_or(80, |(_rows, cols)| cols)
}

async fn show_bar(progress: Arc<Progress>, network: Option<Network>, stop: CancellationToken) {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let mut current: Option<Layout> = None;
    loop {
        let wanted = layout(terminal_width());
        if current != Some(wanted) {
            bar.set_style(bar_style(wanted));
            current = Some(wanted);
        }
        let snapshot = progress.snapshot();
        bar.set_length(snapshot.bytes_total.max(snapshot.bytes_downloaded));
        bar.set_position(snapshot.bytes_downloaded);
        bar.set_message(status_message(
            &snapshot,
            network.as_ref().map(Network::snapshot),
            wanted.detail,
        ));
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    bar.finish_and_clear();
}

async fn show_lines(
    progress: Arc<Progress>,
    network: Option<Network>,
    interval: Duration,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut last_bytes = 0;
    let mut last_time = started;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let snapshot = progress.snapshot();
        let now = Instant::now();
        let rate = (snapshot.bytes_downloaded - last_bytes.min(snapshot.bytes_downloaded)) as f64
            / now.duration_since(last_time).as_secs_f64().max(0.001);
        let percent = if snapshot.bytes_total == 0 {
            100.0
        } else {
            100.0 * snapshot.bytes_downloaded as f64 / snapshot.bytes_total as f64
        };
        eprintln!(
            "progress: {:.0}% {} of {} at {}/s | {}",
            percent.min(100.0),
            human_bytes(snapshot.bytes_downloaded),
            human_bytes(snapshot.bytes_total),
            human_bytes(rate as u64),
            status_message(
                &snapshot,
                network.as_ref().map(Network::snapshot),
                Detail::Full
            )
        );
        last_bytes = snapshot.bytes_downloaded;
        last_time = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;

    /// The bar drawn at `width` columns with the widest figures it can show: the lines the
    /// terminal holds afterwards.
    fn draw(width: u16) -> Vec<String> {
        let term = InMemoryTerm::new(6, width);
        let bar = ProgressBar::with_draw_target(
            Some(1023 << 40),
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        let layout = layout(width);
        bar.set_style(bar_style(layout));
        bar.set_position(1000 << 40);
        let snapshot = ProgressSnapshot {
            objects_total: 812_345,
            objects_done: 812_000,
            retries: [99_999; transport::retry::RetryReason::ALL.len()],
            ..ProgressSnapshot::default()
        };
        let connections = ConnectionSnapshot {
            open: 1024,
            in_use: 1024,
            ..ConnectionSnapshot::default()
        };
        let window = ConcurrencySnapshot {
            window: 1024,
            peak: 1024,
            max: 1024,
            in_flight: 1024,
            autotune: true,
        };
        bar.set_message(status_message(
            &snapshot,
            Some((connections, window)),
            layout.detail,
        ));
        bar.tick();
        term.contents()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The widest the fixed part of a template can print, from each placeholder's widest value
    /// (`{wide_msg}` takes what is left, so it counts nothing).
    fn widest_fixed_part(template: &str) -> usize {
        let mut rest = template;
        let mut width = 0;
        while let Some(open) = rest.find('{') {
            width += rest[..open].chars().count();
            let close = rest[open..].find('}').expect("placeholders close") + open;
            let placeholder = &rest[open + 1..close];
            width += match placeholder.split(':').next().unwrap_or_default() {
                "bar" => placeholder
                    .rsplit(':')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(20),
                "bytes" | "total_bytes" => "1023.99 GiB".len(),
                "binary_bytes_per_sec" => "1023.99 MiB/s".len(),
                "eta" => "59 minutes".len(),
                "percent" => 3,
                "wide_msg" => 0,
                other => panic!("no worst case known for {{{other}}}"),
            };
            rest = &rest[close + 1..];
        }
        width + rest.chars().count()
    }

    #[test]
    fn every_layout_leaves_room_for_status_text_at_its_narrowest_width() {
        for narrowest in [100, 72, 40] {
            let layout = layout(narrowest);
            let fixed = widest_fixed_part(layout.template);
            assert!(
                fixed + 8 <= usize::from(narrowest),
                "{} needs up to {fixed} columns at width {narrowest}",
                layout.template
            );
        }
        assert!(widest_fixed_part(layout(20).template) <= 5);
    }

    #[test]
    fn the_bar_fits_on_one_line_at_every_width() {
        for width in 10..=200 {
            let lines = draw(width);
            assert_eq!(lines.len(), 1, "width {width}: wrapped into {lines:?}");
            assert!(
                lines[0].chars().count() <= usize::from(width),
                "width {width}: {} columns: {:?}",
                lines[0].chars().count(),
                lines[0]
            );
        }
        assert!(draw(132)[0].contains("connections"), "{:?}", draw(132));
        assert!(
            draw(132)[0].contains("requests 1024/1024"),
            "{:?}",
            draw(132)
        );
        assert!(draw(80)[0].contains("files"), "{:?}", draw(80));
    }
}
