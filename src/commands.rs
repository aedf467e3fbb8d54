//! Management commands: read and change apps and nodes through the API and
//! print a table (or the API's JSON with `-o json`).

use clap::{Args, Subcommand};
use skiff_sdk::api::{App, Event, NodeState};
use skiff_sdk::quantity::format_bytes;

use crate::client::{Connect, Output};

/// Standard output was closed by its reader (`skiff logs | head`): the
/// command ends there, quietly and successfully.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Writes one line to standard output; a closed pipe is [`StdoutClosed`].
pub fn write_line(line: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => Ok(other?),
    }
}

/// `println!` that stops the command quietly once stdout is closed.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::commands::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints rows under headers, columns aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        outln!("{}", out.trim_end())
    };
    line(&mut headers.iter().copied())?;
    for row in rows {
        line(&mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// Bytes for people: `232.0 KiB`, `17.7 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// "3m", "2h", "4d": how long ago a Unix-ms time was.
pub fn age(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(ms);
    let s = ((now - ms).max(0) / 1000) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn short_digest(d: &skiff_sdk::Digest) -> String {
    d.hex()[..12].to_owned()
}

/// The conditions that are not true, as `Kind: message`, or "-".
fn problems(app: &App) -> String {
    let bad: Vec<String> = app
        .status
        .conditions
        .iter()
        .filter(|c| !c.status)
        .map(|c| format!("{}: {}", c.kind, c.message))
        .collect();
    if bad.is_empty() {
        "-".into()
    } else {
        bad.join("; ")
    }
}

fn print_events(events: &[Event]) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                age(e.time),
                e.kind.to_string(),
                e.app.clone().or_else(|| e.node.clone()).unwrap_or_default(),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["AGE", "KIND", "OBJECT", "MESSAGE"], &rows)
}

/// `skiff apps`.
pub async fn apps(connect: &Connect) -> anyhow::Result<()> {
    let apps = connect.client()?.apps().await?;
    if connect.output == Output::Json {
        return json(&apps);
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.revision.to_string(),
                format!("{}/{}", a.status.ready_replicas, a.status.desired_replicas),
                short_digest(&a.spec.artifact),
                age(a.updated_at),
                problems(a),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "REVISION", "READY", "ARTIFACT", "UPDATED", "PROBLEMS",
        ],
        &rows,
    )
}

/// `skiff app NAME`: spec summary, replicas per node, conditions, events.
pub async fn app(connect: &Connect, name: &str) -> anyhow::Result<()> {
    let client = connect.client()?;
    let app = client.app(name).await?;
    let replicas = client.replicas(name).await?;
    let events = client.events(Some(name), 0, 1000).await?;
    let recent = &events[events.len().saturating_sub(10)..];
    if connect.output == Output::Json {
        return json(&serde_json::json!({ "app": app, "replicas": replicas, "events": recent }));
    }
    let q = &app.spec.quota;
    outln!("Name:       {}", app.name)?;
    outln!("Revision:   {} (version {})", app.revision, app.version)?;
    outln!("Artifact:   {}", app.spec.artifact)?;
    outln!(
        "Replicas:   {} ready / {} desired",
        app.status.ready_replicas,
        app.status.desired_replicas
    )?;
    outln!(
        "Quota:      memory {} × concurrency {}, fuel {}, timeout {} ms",
        format_bytes(q.memory_bytes),
        q.concurrency,
        q.fuel,
        q.timeout_ms
    )?;
    if let Some(o) = &app.observed {
        outln!(
            "Memory:     reserves {} per replica; instances use {} on average, {} at most",
            format_bytes(o.reserved_bytes),
            format_bytes(o.memory_avg),
            format_bytes(o.memory_peak)
        )?;
        outln!(
            "Demand:     {} in flight, {} requests/s ({} node(s) reporting)",
            o.in_flight,
            o.requests_per_second,
            o.nodes
        )?;
    }
    if let Some(s) = &app.spec.scale {
        let target = match s.metric() {
            skiff_sdk::scale::Metric::Concurrency(t) => format!("{t} in flight"),
            skiff_sdk::scale::Metric::Rps(t) => format!("{t} requests/s"),
        };
        outln!(
            "Scale:      {}..{} replicas, target {target} per replica, idle {} s{}",
            s.min,
            s.max,
            s.idle_ms / 1000,
            if s.min == 0 { " (then sleeps)" } else { "" }
        )?;
    }
    let none = || "none".to_owned();
    let outbound = &app.spec.allowed_outbound_hosts;
    outln!(
        "Outbound:   {}",
        if outbound.is_empty() {
            none()
        } else {
            outbound.join(", ")
        }
    )?;
    let files: Vec<&str> = app.spec.files.keys().map(String::as_str).collect();
    outln!(
        "Files:      {}",
        if files.is_empty() {
            none()
        } else {
            format!("{} (read-only)", files.join(", "))
        }
    )?;
    outln!("\nReplicas:")?;
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.node.clone(),
                r.revision.to_string(),
                format!("{:?}", r.state),
                r.reason.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["ID", "NODE", "REVISION", "STATE", "REASON"], &rows)?;
    outln!("\nConditions:")?;
    let rows: Vec<Vec<String>> = app
        .status
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.kind.clone(),
                c.status.to_string(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    table(&["KIND", "STATUS", "REASON", "MESSAGE"], &rows)?;
    outln!("\nEvents:")?;
    print_events(recent)
}

/// `skiff scale NAME N`.
pub async fn scale(connect: &Connect, name: &str, replicas: u32) -> anyhow::Result<()> {
    let app = connect.client()?.scale(name, replicas).await?;
    if connect.output == Output::Json {
        return json(&app);
    }
    outln!("{name} scaled to {replicas} replicas")?;
    Ok(())
}

/// `skiff delete NAME`.
pub async fn delete(connect: &Connect, name: &str) -> anyhow::Result<()> {
    connect.client()?.delete_app(name).await?;
    outln!("{name} deleted")?;
    Ok(())
}

/// `skiff rollout ...`.
#[derive(Debug, Subcommand)]
pub enum Rollout {
    /// The app's kept revisions.
    History {
        /// App name.
        name: String,
    },
    /// Follow the current rollout until it is done or has failed.
    Status {
        /// App name.
        name: String,
        /// Give up after this long, e.g. `2m`.
        #[arg(long, default_value = "2m", value_parser = skiff_sdk::quantity::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Make an earlier revision current again (default: the previous one).
    Undo {
        /// App name.
        name: String,
        /// Revision to return to.
        #[arg(long)]
        to: Option<u64>,
    },
}

/// Runs a rollout subcommand.
pub async fn rollout(connect: &Connect, command: &Rollout) -> anyhow::Result<()> {
    let client = connect.client()?;
    match command {
        Rollout::History { name } => {
            let app = client.app(name).await?;
            let revisions = client.revisions(name).await?;
            if connect.output == Output::Json {
                return json(&revisions);
            }
            let rows: Vec<Vec<String>> = revisions
                .iter()
                .map(|r| {
                    vec![
                        r.number.to_string(),
                        age(r.created_at),
                        short_digest(&r.spec.artifact),
                        if r.number == app.revision {
                            "current"
                        } else {
                            ""
                        }
                        .into(),
                        r.spec.source.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(&["REVISION", "CREATED", "ARTIFACT", "", "SOURCE"], &rows)?;
        }
        Rollout::Status { name, timeout } => {
            // Only what happens from now on, plus the current state.
            let seen = crate::deploy::latest_event(&client, name).await;
            let app = client.app(name).await?;
            eprintln!(
                "{name}: revision {}, {}/{} ready",
                app.revision, app.status.ready_replicas, app.status.desired_replicas
            );
            crate::deploy::follow_rollout(&client, name, seen, *timeout).await?;
        }
        Rollout::Undo { name, to } => {
            let app = client.rollback(name, *to).await?;
            if connect.output == Output::Json {
                return json(&app);
            }
            outln!("{name} rolled back: now at revision {}", app.revision)?;
        }
    }
    Ok(())
}

/// `skiff nodes`.
pub async fn nodes(connect: &Connect) -> anyhow::Result<()> {
    let nodes = connect.client()?.nodes().await?;
    if connect.output == Output::Json {
        return json(&nodes);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mut state = match n.state {
                NodeState::Ready => "Ready".to_owned(),
                NodeState::NotReady => "NotReady".to_owned(),
            };
            if n.draining {
                state.push_str(",Draining");
            } else if n.cordoned {
                state.push_str(",Cordoned");
            }
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                n.name.clone(),
                state,
                human_bytes(n.capacity.memory_bytes),
                n.ingress.clone(),
                n.last_heartbeat.map(age).unwrap_or_else(|| "never".into()),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
            ]
        })
        .collect();
    table(
        &["NAME", "STATE", "MEMORY", "INGRESS", "HEARTBEAT", "LABELS"],
        &rows,
    )
}

/// `skiff cordon|uncordon|drain NODE`.
pub async fn node_action(connect: &Connect, node: &str, action: &str) -> anyhow::Result<()> {
    let n = connect.client()?.node_action(node, action).await?;
    if connect.output == Output::Json {
        return json(&n);
    }
    let done = match action {
        "cordon" => "cordoned: no new replicas",
        "uncordon" => "uncordoned: accepts replicas again",
        _ => "draining: replicas move elsewhere as replacements become ready",
    };
    outln!("node {node} {done}")?;
    Ok(())
}

/// `skiff events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this app's events.
    #[arg(long)]
    app: Option<String>,
    /// How many of the most recent.
    #[arg(long, default_value_t = 50)]
    last: usize,
}

/// Prints recent events.
pub async fn events(connect: &Connect, args: &EventsArgs) -> anyhow::Result<()> {
    let client = connect.client()?;
    let mut all = Vec::new();
    let mut since = 0;
    loop {
        let page = client.events(args.app.as_deref(), since, 1000).await?;
        let Some(last) = page.last() else { break };
        since = last.id;
        let full = page.len() == 1000;
        all.extend(page);
        if !full {
            break;
        }
    }
    let recent = &all[all.len().saturating_sub(args.last)..];
    if connect.output == Output::Json {
        return json(&recent);
    }
    print_events(recent)
}

/// `skiff logs NAME [-f]`: `node | line`, or the entries as JSON lines.
pub async fn logs(connect: &Connect, name: &str, follow: bool) -> anyhow::Result<()> {
    let client = connect.client()?;
    let as_json = connect.output == Output::Json;
    let mut closed = None;
    client
        .logs(name, follow, |entry| {
            // Stop reading once nothing more can be written.
            closed = print_entry(&entry, as_json, true).err();
            closed.is_none()
        })
        .await?;
    closed.map_or(Ok(()), Err)
}

/// Prints one log entry: as a JSON line, or its text (after `node | `
/// with `with_node`); Skiff's own notes (a node that cannot be read) go to
/// stderr.
pub fn print_entry(
    entry: &skiff_sdk::api::LogEntry,
    as_json: bool,
    with_node: bool,
) -> anyhow::Result<()> {
    if as_json {
        let line = serde_json::to_string(entry)?;
        outln!("{line}")
    } else if entry.stream == "skiff" {
        eprintln!("[{}] {}", entry.node, entry.line);
        Ok(())
    } else if with_node {
        outln!("{} | {}", entry.node, entry.line)
    } else {
        outln!("{}", entry.line)
    }
}
