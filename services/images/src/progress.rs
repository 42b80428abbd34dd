//! Docker's JSON progress messages (`pkg/jsonmessage`, `pkg/progress`) and the
//! sink that streams them to the caller.

use bus_schema::images::{JsonMessage, ProgressDetail};
use bus_schema::BusError;
use std::future::Future;

/// Where a long operation writes its messages. The bus adapter opens the stream on
/// the first message, so an error before any message becomes the request's error
/// (Docker answers such errors with an HTTP status, not in the stream).
pub trait Progress: Send {
    fn send(&mut self, m: JsonMessage) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// A sink that drops everything (internal pulls, tests).
pub struct Discard;
impl Progress for Discard {
    async fn send(&mut self, _m: JsonMessage) -> Result<(), BusError> {
        Ok(())
    }
}

/// Collects messages (tests).
#[derive(Default)]
pub struct Collect(pub Vec<JsonMessage>);
impl Progress for Collect {
    async fn send(&mut self, m: JsonMessage) -> Result<(), BusError> {
        self.0.push(m);
        Ok(())
    }
}

/// A message about one item without progress (Moby's `progress.Message`: its
/// `formatStatus` writes only `status` and `id`), as "Pulling from library/busybox".
pub fn message_id(status: &str, id: &str) -> JsonMessage {
    JsonMessage { id: Some(id.to_string()), status: Some(status.to_string()), ..Default::default() }
}

/// A per-item status with an empty progressDetail, as Moby sends them (its
/// `progress.Update`: "Pulling fs layer", "Waiting", "Pull complete").
pub fn status_id(status: &str, id: &str) -> JsonMessage {
    JsonMessage {
        id: Some(id.to_string()),
        status: Some(status.to_string()),
        progress_detail: Some(ProgressDetail::default()),
        ..Default::default()
    }
}

/// A progress message (`Downloading`, `Extracting`, `Pushing`, `Loading layer`).
pub fn progress(status: &str, id: &str, current: u64, total: u64) -> JsonMessage {
    JsonMessage {
        id: Some(id.to_string()),
        status: Some(status.to_string()),
        progress: Some(progress_bar(current as i64, total as i64)),
        progress_detail: Some(ProgressDetail {
            current: Some(current as i64),
            total: Some(total as i64),
        }),
        ..Default::default()
    }
}

/// `JSONProgress.String()` for a wide (non-terminal) reader.
pub fn progress_bar(current: i64, total: i64) -> String {
    if current <= 0 && total <= 0 {
        return String::new();
    }
    if total <= 0 {
        return format!("{:>8}", human_size(current as f64));
    }
    let pct = ((current as f64 / total as f64 * 100.0) as i64 / 2).clamp(0, 50) as usize;
    let bar = format!("[{}>{}] ", "=".repeat(pct), " ".repeat(50 - pct));
    let numbers = if current > total {
        format!("{:>8}", human_size(current as f64))
    } else {
        format!(
            "{:>8}/{}",
            human_size(current as f64),
            human_size(total as f64)
        )
    };
    bar + &numbers
}

/// go-units `HumanSize`: decimal units, 4 significant digits (`%.4g`).
pub fn human_size(mut size: f64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut i = 0;
    while size >= 1000.0 && i < UNITS.len() - 1 {
        size /= 1000.0;
        i += 1;
    }
    format!("{}{}", fmt_g4(size), UNITS[i])
}

/// Go's `%.4g` for the values HumanSize produces (0 <= v < 1000 after scaling).
fn fmt_g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    let decimals = (3 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    // rounding may add a digit (999.96 -> 1000.0): still fine for %g up to 4 digits
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_go_units() {
        assert_eq!(human_size(146.0), "146B");
        assert_eq!(human_size(32768.0), "32.77kB");
        assert_eq!(human_size(1084099.0), "1.084MB");
        assert_eq!(human_size(229376.0), "229.4kB");
        assert_eq!(human_size(1000.0), "1kB");
        assert_eq!(human_size(4_400_000.0), "4.4MB");
        assert_eq!(human_size(0.0), "0B");
    }

    #[test]
    fn bars_like_moby() {
        assert_eq!(
            progress_bar(32768, 1084099),
            "[=>                                                 ]  32.77kB/1.084MB"
        );
        assert_eq!(
            progress_bar(146, 146),
            "[==================================================>]     146B/146B"
        );
        assert_eq!(
            progress_bar(229376, 1084099),
            "[==========>                                        ]  229.4kB/1.084MB"
        );
    }

    #[test]
    fn message_shape() {
        let j = serde_json::to_string(&message_id("Pulling from library/busybox", "latest")).unwrap();
        assert_eq!(j, r#"{"id":"latest","status":"Pulling from library/busybox"}"#);
        let m = status_id("Pulling fs layer", "abc");
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"abc","status":"Pulling fs layer","progressDetail":{}}"#
        );
    }
}
