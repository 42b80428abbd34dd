//! Time as Docker reads and prints it: Go's RFC 3339 layouts in UTC, the `until` /
//! `since` values of filters and queries (Moby's `api/types/time`), Go durations
//! (`time.ParseDuration`) and `docker ps`'s human durations.
//!
//! Times are (seconds, nanoseconds) since the epoch, or nanoseconds as an `i128`
//! where two are compared. The calendar arithmetic is written here (Howard
//! Hinnant's civil-from-days and its inverse, a dozen lines) rather than taken from
//! the `time` crate: the shim links this crate and stays small, and none of Go's
//! layouts (`RFC3339Nano`'s dropped zeros, Moby's `2006-01-02T15` forms) is a
//! format that crate knows.

use std::time::{SystemTime, UNIX_EPOCH};

const NS: i128 = 1_000_000_000;

/// Now as (seconds, nanoseconds) since the epoch.
pub fn now() -> (i64, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// (seconds, nanoseconds) as nanoseconds since the epoch.
pub fn nanos(t: (i64, u32)) -> i128 {
    t.0 as i128 * NS + t.1 as i128
}

/// Now in Go's `RFC3339Nano`, the form Docker's JSON gives every time
/// (`Created`, `StartedAt`, `SystemTime`, stats' `read`).
pub fn now_rfc3339() -> String {
    let (s, n) = now();
    rfc3339_nano(s, n)
}

fn date_time(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, (sod % 3600) / 60, sod % 60)
}

/// Go's `time.RFC3339Nano` in UTC: the fraction without its trailing zeros, none
/// at all on a whole second (`2023-11-14T22:13:20.5Z`, `0001-01-01T00:00:00Z`).
pub fn rfc3339_nano(secs: i64, nanos: u32) -> String {
    let mut s = date_time(secs);
    if nanos != 0 {
        let f = format!("{nanos:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Moby's `RFC3339NanoFixed` in UTC: always nine fraction digits, so lines line up
/// (`docker logs -t`, `docker events`).
pub fn rfc3339_nano_fixed(secs: i64, nanos: u32) -> String {
    format!("{}.{nanos:09}Z", date_time(secs))
}

/// Go's `time.RFC3339` in UTC, whole seconds (volumes' `CreatedAt`).
pub fn rfc3339_secs(secs: i64) -> String {
    format!("{}Z", date_time(secs))
}

/// Parse RFC 3339 (`2024-01-02T03:04:05.123Z`, offsets allowed) to (seconds, nanoseconds).
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' && b[10] != b't' && b[10] != b' ' {
        return None;
    }
    let mut c = Cursor { s: b, i: 0 };
    let t = c.date()?;
    c.i = 11;
    let (secs, nanos) = c.clock(t, 2)?;
    let off = c.zone()?;
    c.end()?;
    Some((secs - off, nanos))
}

/// An RFC 3339 time as nanoseconds since the epoch (for comparisons).
pub fn rfc3339_to_nanos(s: &str) -> Option<i128> {
    parse_rfc3339(s).map(nanos)
}

/// A Unix timestamp with an optional fraction (`1700000000`, `1700000000.5`) as
/// nanoseconds: Moby's `ParseTimestamps`, the form the API's `since`/`until` query
/// parameters take (the CLI converts whatever the user typed to it).
pub fn parse_timestamp(value: &str) -> Result<i128, String> {
    let bad = || format!("failed to parse value as time or duration: \"{value}\"");
    let (s, n) = match value.split_once('.') {
        Some((s, n)) => (s, Some(n)),
        None => (value, None),
    };
    let sec: i64 = go_int(s).ok_or_else(bad)?;
    let Some(n) = n else { return Ok(sec as i128 * NS) };
    let frac: i64 = go_int(n).ok_or_else(bad)?;
    // Moby scales the fraction to nanoseconds whatever its length (".5" = 500 ms)
    let ns = (frac as f64 * 10f64.powi(9 - n.len() as i32)) as i128;
    Ok(sec as i128 * NS + ns)
}

/// Go's `strconv.ParseInt(s, 10, 64)`: an optional sign, then decimal digits.
fn go_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The instant an `until` filter (prune, `docker events --until`, `docker logs
/// --until`) names, as nanoseconds since the epoch; Moby's `GetTimestamp` followed by
/// `ParseTimestamps`:
/// - a Go duration (`10m`, `1h30m`, `-5s`; not `0`): that long before `now`, in
///   whole seconds;
/// - an RFC 3339 date or time, whole or cut short (`2006-01-02`,
///   `2006-01-02T15`, `2006-01-02T15:04`, `2006-01-02T15:04:05.999999999`), with a
///   zone (`Z`, `+07:00`) or without one (then in the daemon's local zone);
/// - else a Unix timestamp with an optional fraction (`1700000000.5`, `0`).
///
/// `now` is the reference time (seconds, nanoseconds).
pub fn parse_until(value: &str, now: (i64, u32)) -> Result<i128, String> {
    if value != "0" {
        if let Ok(d) = parse_duration(value) {
            let t = nanos(now) - d as i128;
            return Ok(t.div_euclid(NS) * NS);
        }
    }
    match parse_moby_time(value, now.0) {
        Ok(t) => Ok(t),
        // something like a date that is not a valid one
        Err(e) if value.contains('-') => Err(e),
        Err(_) => parse_timestamp(value),
    }
}

/// Moby's `GetTimestamp` layouts (see [`parse_until`]).
fn parse_moby_time(value: &str, now_secs: i64) -> Result<i128, String> {
    let bad = |why: &str| format!("parsing time \"{value}\": {why}");
    let in_local = !value.contains(['z', 'Z', '+']) && value.matches('-').count() != 3;
    let mut c = Cursor { s: value.as_bytes(), i: 0 };
    let date = c.date().ok_or_else(|| bad("not a date"))?;
    let (secs, ns) = if value.contains('.') {
        // RFC3339Nano: the whole time, a fraction
        c.lit(b'T').ok_or_else(|| bad("no time"))?;
        c.clock(date, 2).ok_or_else(|| bad("bad time"))?
    } else if value.contains('T') {
        let mut colons = value.matches(':').count();
        if !in_local && !value.contains(['z', 'Z']) && colons > 0 {
            colons -= 1; // the one in the zone offset
        }
        c.lit(b'T').ok_or_else(|| bad("no time"))?;
        c.clock(date, colons.min(2)).ok_or_else(|| bad("bad time"))?
    } else {
        (date, 0)
    };
    let off = if in_local { local_offset(now_secs) } else { c.zone().ok_or_else(|| bad("bad zone"))? };
    c.end().ok_or_else(|| bad("extra text"))?;
    Ok((secs - off) as i128 * NS + ns as i128)
}

/// The daemon's local zone offset (seconds east of UTC) now, as Go's
/// `time.FixedZone(time.Now().Zone())` takes it: from `TZ` or /etc/localtime.
fn local_offset(now_secs: i64) -> i64 {
    let t = now_secs as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives for the call
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return 0;
    }
    tm.tm_gmtoff
}

/// Reads Go's fixed-width layout fields.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn num(&mut self, width: usize) -> Option<i64> {
        let d = self.s.get(self.i..self.i + width)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += width;
        std::str::from_utf8(d).ok()?.parse().ok()
    }
    fn lit(&mut self, c: u8) -> Option<()> {
        (self.s.get(self.i) == Some(&c)).then(|| self.i += 1)
    }
    fn end(&self) -> Option<()> {
        (self.i == self.s.len()).then_some(())
    }
    /// `2006-01-02` as seconds at midnight UTC.
    fn date(&mut self) -> Option<i64> {
        let y = self.num(4)?;
        self.lit(b'-')?;
        let m = self.num(2)?;
        self.lit(b'-')?;
        let d = self.num(2)?;
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return None;
        }
        Some(days_from_civil(y, m, d) * 86400)
    }
    /// `15`, `15:04` or `15:04:05` (after `colons` colons) and an optional fraction
    /// after the seconds, added to `date`: (seconds, nanoseconds).
    fn clock(&mut self, date: i64, colons: usize) -> Option<(i64, u32)> {
        let h = self.num(2)?;
        let mut mi = 0;
        let mut se = 0;
        if colons >= 1 {
            self.lit(b':')?;
            mi = self.num(2)?;
        }
        if colons >= 2 {
            self.lit(b':')?;
            se = self.num(2)?;
        }
        if h > 23 || mi > 59 || se > 59 {
            return None;
        }
        let mut nanos = 0u32;
        if colons >= 2 && matches!(self.s.get(self.i), Some(b'.' | b',')) {
            self.i += 1;
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let f = &self.s[start..self.i];
            if f.is_empty() {
                return None;
            }
            for k in 0..9 {
                nanos = nanos * 10 + f.get(k).map_or(0, |c| (c - b'0') as u32);
            }
        }
        Some((date + h * 3600 + mi * 60 + se, nanos))
    }
    /// `Z` or `±07:00`: seconds east of UTC.
    fn zone(&mut self) -> Option<i64> {
        match self.s.get(self.i)? {
            b'Z' | b'z' => {
                self.i += 1;
                Some(0)
            }
            c @ (b'+' | b'-') => {
                let sign = if *c == b'-' { -1 } else { 1 };
                self.i += 1;
                let h = self.num(2)?;
                self.lit(b':')?;
                let m = self.num(2)?;
                (h < 24 && m < 60).then_some(sign * (h * 3600 + m * 60))
            }
            _ => None,
        }
    }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Go's `time.ParseDuration` (`300ms`, `-1.5h`, `2h45m`, `1µs`) in nanoseconds,
/// with Go's error messages: used by `until` filters and healthcheck options.
pub fn parse_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration \"{orig}\"");
    let mut s = orig;
    let mut neg = false;
    if let Some(r) = s.strip_prefix('-') {
        neg = true;
        s = r;
    } else if let Some(r) = s.strip_prefix('+') {
        s = r;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let is_num = |c: u8| c == b'.' || c.is_ascii_digit();
    let mut total: u128 = 0;
    while !s.is_empty() {
        if !is_num(s.as_bytes()[0]) {
            return Err(invalid());
        }
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let v: u128 = if int_len == 0 { 0 } else { s[..int_len].parse().map_err(|_| invalid())? };
        s = &s[int_len..];
        let mut frac = "";
        if let Some(r) = s.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac = &r[..n];
            s = &r[n..];
            if int_len == 0 && n == 0 {
                return Err(invalid()); // "." alone
            }
        }
        let unit_len = s.bytes().take_while(|c| !is_num(*c)).count();
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration \"{orig}\""));
        }
        let unit: u128 = match &s[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => return Err(format!("time: unknown unit \"{u}\" in duration \"{orig}\"")),
        };
        s = &s[unit_len..];
        let mut part = v.checked_mul(unit).ok_or_else(invalid)?;
        if !frac.is_empty() {
            // Go keeps the fraction's digits until they overflow, then scales
            let digits = &frac[..frac.len().min(18)];
            let f: u128 = digits.parse().map_err(|_| invalid())?;
            part += (f as f64 * (unit as f64 / 10f64.powi(digits.len() as i32))) as u128;
        }
        total = total.checked_add(part).ok_or_else(invalid)?;
        if total > 1 << 63 {
            return Err(invalid());
        }
    }
    if neg {
        return Ok((total as i128).wrapping_neg() as i64);
    }
    if total > i64::MAX as u128 {
        return Err(invalid());
    }
    Ok(total as i64)
}

/// Docker's `units.HumanDuration`, used in `docker ps` STATUS ("Up 5 seconds").
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 1 {
        return "Less than a second".into();
    }
    if s == 1 {
        return "1 second".into();
    }
    if s < 60 {
        return format!("{s} seconds");
    }
    let m = s / 60;
    if m == 1 {
        return "About a minute".into();
    }
    if m < 60 {
        return format!("{m} minutes");
    }
    let h = (s as f64 / 3600.0).round() as i64;
    if h == 1 {
        return "About an hour".into();
    }
    if h < 48 {
        return format!("{h} hours");
    }
    if h < 24 * 7 * 2 {
        return format!("{} days", h / 24);
    }
    if h < 24 * 30 * 2 {
        return format!("{} weeks", h / 24 / 7);
    }
    if h < 24 * 365 * 2 {
        return format!("{} months", h / 24 / 30);
    }
    format!("{} years", h / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    #[test]
    fn go_layouts() {
        assert_eq!(rfc3339_nano(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(T, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339_nano(T, 500_000_000), "2023-11-14T22:13:20.5Z");
        assert_eq!(rfc3339_nano(-62135596800, 0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano_fixed(T, 500_000_000), "2023-11-14T22:13:20.500000000Z");
        assert_eq!(rfc3339_nano_fixed(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_secs(T), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_secs(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.000000005Z"), Some((T, 5)));
        assert_eq!(parse_rfc3339("2023-11-14T23:13:20.5+01:00"), Some((T, 500_000_000)));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some((T, 0)));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z").map(|x| x.0), Some(-62135596800));
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20"), None);
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Zjunk"), None);
        assert!(parse_rfc3339("nope").is_none());
        let (s, n) = now();
        assert_eq!(parse_rfc3339(&rfc3339_nano(s, n)), Some((s, n)));
        assert_eq!(parse_rfc3339(&rfc3339_nano_fixed(s, n)), Some((s, n)));
    }

    #[test]
    fn go_durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("-0"), 0);
        assert_eq!(ok("0s"), 0);
        assert_eq!(ok("5s"), 5_000_000_000);
        assert_eq!(ok("1h30m"), 5_400_000_000_000);
        assert_eq!(ok("1.5h"), 5_400_000_000_000);
        assert_eq!(ok(".5s"), 500_000_000);
        assert_eq!(ok("5.s"), 5_000_000_000);
        assert_eq!(ok("-5m"), -300_000_000_000);
        assert_eq!(ok("+5m"), 300_000_000_000);
        assert_eq!(ok("300ms"), 300_000_000);
        assert_eq!(ok("2us"), 2_000);
        assert_eq!(ok("2\u{b5}s"), 2_000);
        assert_eq!(ok("2\u{3bc}s"), 2_000);
        assert_eq!(ok("7ns"), 7);
        assert_eq!(ok("2562047h47m16.854775807s"), i64::MAX);
        assert_eq!(ok("-2562047h47m16.854775808s"), i64::MIN);
        assert_eq!(parse_duration("2562047h47m16.854775808s").unwrap_err(), "time: invalid duration \"2562047h47m16.854775808s\"");
        assert_eq!(parse_duration("").unwrap_err(), "time: invalid duration \"\"");
        assert_eq!(parse_duration(".s").unwrap_err(), "time: invalid duration \".s\"");
        assert_eq!(parse_duration("s").unwrap_err(), "time: invalid duration \"s\"");
        assert_eq!(parse_duration("1").unwrap_err(), "time: missing unit in duration \"1\"");
        assert_eq!(parse_duration("1d").unwrap_err(), "time: unknown unit \"d\" in duration \"1d\"");
        // Go reads a unit up to the next digit or dot
        assert_eq!(parse_duration("1h-5m").unwrap_err(), "time: unknown unit \"h-\" in duration \"1h-5m\"");
    }

    #[test]
    fn unix_timestamps() {
        assert_eq!(parse_timestamp("1700000000"), Ok(T as i128 * NS));
        assert_eq!(parse_timestamp("1700000000.5"), Ok(T as i128 * NS + 500_000_000));
        assert_eq!(parse_timestamp("1700000000.000000001"), Ok(T as i128 * NS + 1));
        assert_eq!(parse_timestamp("-1"), Ok(-NS));
        assert!(parse_timestamp("").is_err());
        assert!(parse_timestamp("1.x").is_err());
        assert!(parse_timestamp("abc").is_err());
    }

    #[test]
    fn until_is_mobys_get_timestamp() {
        let now = (T, 700_000_000);
        let u = |s: &str| parse_until(s, now);
        // durations: that long before now, whole seconds
        assert_eq!(u("10m"), Ok((T - 600) as i128 * NS));
        assert_eq!(u("1h30m"), Ok((T - 5400) as i128 * NS));
        assert_eq!(u("1.5s"), Ok((T - 1) as i128 * NS)); // now-1.5s = T-0.8 → T-1
        assert_eq!(u("0s"), Ok(T as i128 * NS));
        assert_eq!(u("-1h"), Ok((T + 3600) as i128 * NS));
        // "0" is the Unix epoch, not a duration
        assert_eq!(u("0"), Ok(0));
        // Unix timestamps, with a fraction
        assert_eq!(u("1700000000"), Ok(T as i128 * NS));
        assert_eq!(u("1700000000.25"), Ok(T as i128 * NS + 250_000_000));
        // RFC 3339 with a zone, whole or cut short
        assert_eq!(u("2023-11-14T22:13:20Z"), Ok(T as i128 * NS));
        assert_eq!(u("2023-11-14T22:13:20.5Z"), Ok(T as i128 * NS + 500_000_000));
        assert_eq!(u("2023-11-14T23:13:20+01:00"), Ok(T as i128 * NS));
        assert_eq!(u("2023-11-14T21:13:20-01:00"), Ok(T as i128 * NS));
        assert_eq!(u("2023-11-14T22:13Z"), Ok((T - 20) as i128 * NS));
        assert_eq!(u("2023-11-14T23:13+01:00"), Ok((T - 20) as i128 * NS));
        assert_eq!(u("2023-11-14T22Z"), Ok((T - 13 * 60 - 20) as i128 * NS));
        assert_eq!(u("2023-11-14Z"), Ok((T - 22 * 3600 - 13 * 60 - 20) as i128 * NS));
        assert_eq!(u("2023-11-14+01:00"), Ok((T - 23 * 3600 - 13 * 60 - 20) as i128 * NS));
        // without a zone: the daemon's local zone
        let off = local_offset(T) as i128 * NS;
        assert_eq!(u("2023-11-14T22:13:20"), Ok(T as i128 * NS - off));
        assert_eq!(u("2023-11-14T22:13:20.5"), Ok(T as i128 * NS + 500_000_000 - off));
        assert_eq!(u("2023-11-14T22:13"), Ok((T - 20) as i128 * NS - off));
        assert_eq!(u("2023-11-14T22"), Ok((T - 800) as i128 * NS - off));
        assert_eq!(u("2023-11-14"), Ok((T - 80000) as i128 * NS - off));
        // date-like but wrong: the parse error, not a timestamp
        assert!(u("2023-13-01").unwrap_err().starts_with("parsing time \"2023-13-01\""));
        assert!(u("2023-02-30T00:00:00Z").is_err());
        assert!(u("2023-11-14T25:00:00Z").is_err());
        assert!(u("-5").is_err());
        // neither
        assert_eq!(u("abc"), Err("failed to parse value as time or duration: \"abc\"".into()));
        assert!(u("1d").is_err());
        assert!(u("").is_err());
    }

    #[test]
    fn human() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(61), "About a minute");
        assert_eq!(human_duration(300), "5 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(7200), "2 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
    }
}
