//! Backup schedules: standard 5-field crontab expressions with Kubernetes CronJob
//! semantics, and the pure decision whether a backup is due.
//!
//! # Why Kubernetes semantics
//!
//! Operators already write backup schedules as CronJob schedules, so a schedule in a
//! stowage policy means exactly what the same string means in `CronJob.spec.schedule`.
//! Kubernetes validates that field with robfig/cron v3's *standard* parser
//! (`cron.ParseStandard`), and this module accepts the same language:
//!
//! * five fields, `minute hour day-of-month month day-of-week`, evaluated in UTC;
//! * in every field: numbers, `*`, `?` (same as `*`), ranges `a-b`, steps `*/n`, `a-b/n`
//!   and `a/n` (= `a-max/n`), and comma lists of those;
//! * 3-letter month (`JAN`-`DEC`) and weekday (`SUN`-`SAT`) names, case-insensitive;
//! * weekdays 0-6 with 0 = Sunday (7 is rejected, as robfig does);
//! * the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//!   `@midnight` and `@hourly`;
//! * day-of-month and day-of-week: when either field is unrestricted (it contains a bare
//!   `*`, `?` or `*/1`, the robfig "star bit"), a day must match both, so the restricted
//!   one decides; when both are restricted a day matches when *either* matches (the Vixie
//!   cron OR): `0 0 13 * 5` runs on every 13th and on every Friday.
//!
//! # Why not Quartz (or croner's extensions)
//!
//! Quartz/Spring expressions have a leading seconds field, and croner accepts further
//! extensions (`L`, `W`, `#`, a `+` prefix for AND day matching, 7 = Sunday). None of
//! them is valid in a CronJob, a 6-field expression silently means something else in
//! each dialect, and backups have no use for second resolution. They are rejected with
//! an error that says what is expected instead.
//!
//! # How it is evaluated
//!
//! The expression is tokenised and validated here, field by field, into value sets. The
//! sets are then rendered as a canonical croner expression (plain number lists or `*`),
//! so croner's own parsing quirks never apply, and the robfig star rule is reproduced
//! by emitting `*` for a day field exactly when robfig would set its star bit. croner is
//! configured without seconds and years, with OR day matching and Sunday = 0, and
//! performs the forward and backward searches.
//!
//! # Differences from robfig/cron, on purpose
//!
//! * `@every <duration>` (accepted by robfig) is rejected: it is an interval, not a
//!   calendar schedule, and its phase would depend on when the scheduler started.
//! * Day fields that can never match (`0 0 30 2 *`) are rejected: Kubernetes accepts
//!   them and then never runs the job, which for backups is a silent data-loss risk.
//! * Go's `strconv.Atoi` lets robfig accept a `+` sign (`+5`), and robfig ignores the
//!   rest of a range starting with `*` (`*-5` means `*`); both are rejected here.
//! * Leading and trailing whitespace is trimmed (robfig rejects ` @daily`).
//!
//! # The due decision
//!
//! [`decide`] is a pure function of the schedule, the [`RunHistory`] of a volume and the
//! current time; see its documentation for the rules.

use std::fmt;
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// What every schedule error ends with: the shape of a valid schedule.
const EXPECTED: &str =
    "expected a standard 5-field crontab expression such as \"0 3 * * *\" or @daily";

/// At most this many calendar days are scanned to count missed runs (about 273 years,
/// see [`decide`]): the count is exact below it and a lower bound beyond it.
pub const MISSED_COUNT_CAP_DAYS: u64 = 100_000;

/// One field of a crontab expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CronField {
    /// Minute, 0-59.
    Minute,
    /// Hour, 0-23.
    Hour,
    /// Day of the month, 1-31.
    DayOfMonth,
    /// Month, 1-12 or `JAN`-`DEC`.
    Month,
    /// Day of the week, 0-6 with 0 = Sunday, or `SUN`-`SAT`.
    DayOfWeek,
}

impl CronField {
    const ALL: [CronField; 5] = [
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];

    /// The smallest and largest value of the field.
    pub fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 6),
        }
    }

    /// The accepted 3-letter names, index 0 meaning the field's smallest value.
    fn names(self) -> &'static [&'static str] {
        match self {
            CronField::Month => &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
            CronField::DayOfWeek => &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
            _ => &[],
        }
    }

    /// The range as written in error messages.
    fn range_text(self) -> &'static str {
        match self {
            CronField::Minute => "0-59",
            CronField::Hour => "0-23",
            CronField::DayOfMonth => "1-31",
            CronField::Month => "1-12 (or JAN-DEC)",
            CronField::DayOfWeek => "0-6 (0 = Sunday)",
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// Why a schedule expression was rejected (see [`ScheduleError`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleErrorKind {
    /// Nothing but whitespace.
    #[error("is empty")]
    Empty,
    /// A `TZ=` or `CRON_TZ=` prefix.
    #[error(
        "TZ= and CRON_TZ= prefixes are not allowed (Kubernetes forbids them in a schedule); \
         schedules are evaluated in UTC"
    )]
    TimeZonePrefix,
    /// An `@every <duration>` interval.
    #[error(
        "@every is not supported by CronJob-style schedules, use a crontab expression \
         (\"0 * * * *\" for hourly)"
    )]
    Every,
    /// An `@...` word that is not one of the lowercase Kubernetes descriptors.
    #[error(
        "unknown descriptor {descriptor:?} (Kubernetes accepts only lowercase @yearly, \
         @annually, @monthly, @weekly, @daily, @midnight and @hourly)"
    )]
    UnknownDescriptor {
        /// The descriptor as written.
        descriptor: String,
    },
    /// Not exactly five fields.
    #[error("{}", field_count_text(*found))]
    FieldCount {
        /// How many whitespace-separated fields were found.
        found: usize,
    },
    /// A value outside the field's range.
    #[error("{}", out_of_range_text(*field, value))]
    OutOfRange {
        /// The field holding the value.
        field: CronField,
        /// The value as written.
        value: String,
    },
    /// A croner or Quartz extension that Kubernetes does not accept.
    #[error(
        "{field} {token:?} uses {feature}, a croner/Quartz extension that Kubernetes does \
         not accept"
    )]
    Extension {
        /// The field holding the token.
        field: CronField,
        /// The offending list element.
        token: String,
        /// What the extension means.
        feature: &'static str,
    },
    /// Something that is neither a value, a name, `*`, `?`, a range nor a step.
    #[error(
        "{field} {token:?} is not a valid value, range, step or list (values {})",
        field.range_text()
    )]
    InvalidToken {
        /// The field holding the token.
        field: CronField,
        /// The offending list element (or the whole field for an empty list element).
        token: String,
    },
    /// A range whose start is after its end (ranges do not wrap around).
    #[error("{field} range {start}-{end} runs backwards (ranges do not wrap around)")]
    BackwardsRange {
        /// The field holding the range.
        field: CronField,
        /// The range start.
        start: u32,
        /// The range end.
        end: u32,
    },
    /// A step of zero.
    #[error("{field} {token:?} has a step of 0; the step must be a positive number")]
    ZeroStep {
        /// The field holding the step.
        field: CronField,
        /// The offending list element.
        token: String,
    },
    /// The day-of-month field names only days that none of the selected months has.
    #[error(
        "day-of-month {day_of_month:?} never occurs in month {month:?}, so the schedule \
         would never run"
    )]
    NeverRuns {
        /// The day-of-month field as written.
        day_of_month: String,
        /// The month field as written.
        month: String,
    },
    /// The validated expression could not be prepared by croner (not expected to happen).
    #[error("could not be prepared for evaluation: {message}")]
    Evaluator {
        /// croner's error.
        message: String,
    },
}

fn field_count_text(found: usize) -> String {
    match found {
        6 => "has 6 fields; a leading seconds field (Quartz/Spring style) is not supported, \
              CronJob schedules have 5 fields and minute resolution"
            .to_owned(),
        7 => "has 7 fields; seconds and year fields (Quartz style) are not supported, \
              CronJob schedules have 5 fields"
            .to_owned(),
        n => format!(
            "has {n} field{}, but needs exactly 5 (minute hour day-of-month month day-of-week)",
            if n == 1 { "" } else { "s" }
        ),
    }
}

fn out_of_range_text(field: CronField, value: &str) -> String {
    let mut text = format!("{field} {value} is out of range {}", field.range_text());
    if field == CronField::DayOfWeek && value.trim_start_matches('0') == "7" {
        text.push_str("; Kubernetes does not accept 7 for Sunday, use 0 or SUN");
    }
    text
}

/// A schedule expression that is not a valid Kubernetes CronJob schedule.
///
/// Displays as `schedule "<expression>": <reason>; expected a standard 5-field crontab
/// expression such as "0 3 * * *" or @daily`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("schedule {expression:?}: {kind}; {EXPECTED}")]
pub struct ScheduleError {
    /// The rejected expression, as given.
    pub expression: String,
    /// What is wrong with it.
    pub kind: ScheduleErrorKind,
}

/// The values one field selects, and whether robfig would set its star bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FieldSet {
    /// Bit `v` set when value `v` is selected.
    bits: u64,
    /// The field contains a bare `*`, `?` or `*/1` (robfig's star bit): for the day
    /// fields this switches from OR to AND matching.
    star: bool,
}

impl FieldSet {
    fn has(self, value: u32) -> bool {
        value < 64 && self.bits & (1 << value) != 0
    }

    fn values(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |&v| self.has(v))
    }
}

/// The validated value sets of the five fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Spec {
    minute: FieldSet,
    hour: FieldSet,
    day_of_month: FieldSet,
    month: FieldSet,
    day_of_week: FieldSet,
}

/// The longest each month can be (February in a leap year).
const MAX_MONTH_LENGTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Spec {
    fn field(&self, field: CronField) -> FieldSet {
        match field {
            CronField::Minute => self.minute,
            CronField::Hour => self.hour,
            CronField::DayOfMonth => self.day_of_month,
            CronField::Month => self.month,
            CronField::DayOfWeek => self.day_of_week,
        }
    }

    /// Whether the schedule runs on `date` (robfig's `dayMatches` plus the month).
    fn day_matches(&self, date: Date) -> bool {
        if !self.month.has(date.month() as u32) {
            return false;
        }
        let dom = self.day_of_month.has(date.day() as u32);
        let dow = self
            .day_of_week
            .has(date.weekday().to_sunday_zero_offset() as u32);
        if self.day_of_month.star || self.day_of_week.star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether some month of the schedule has a day that the schedule runs on.
    fn can_run(&self) -> bool {
        if !self.day_of_week.star || self.day_of_month.star {
            // Either every day passes the day-of-month test, or (OR matching) every
            // month has every weekday.
            return true;
        }
        self.month.values().any(|m| {
            self.day_of_month
                .values()
                .any(|d| d <= MAX_MONTH_LENGTH[m as usize - 1])
        })
    }

    /// Scheduled times on one matching day whose second of the day `s` satisfies
    /// `after < s <= until` (each bound optional).
    fn runs_within_day(&self, after: Option<u32>, until: Option<u32>) -> u64 {
        let mut count = 0;
        for h in self.hour.values() {
            for m in self.minute.values() {
                let s = h * 3600 + m * 60;
                if after.is_none_or(|a| s > a) && until.is_none_or(|u| s <= u) {
                    count += 1;
                }
            }
        }
        count
    }

    /// Number of scheduled times in `(after, until]`, scanning at most
    /// [`MISSED_COUNT_CAP_DAYS`] days after the day of `after`.
    fn count_between(&self, after: Timestamp, until: Timestamp) -> u64 {
        if until <= after {
            return 0;
        }
        let a = TimeZone::UTC.to_datetime(after);
        let b = TimeZone::UTC.to_datetime(until);
        let second_of_day = |t: jiff::civil::DateTime| {
            t.hour() as u32 * 3600 + t.minute() as u32 * 60 + t.second() as u32
        };
        let (day_a, day_b) = (a.date(), b.date());
        if day_a == day_b {
            return if self.day_matches(day_a) {
                self.runs_within_day(Some(second_of_day(a)), Some(second_of_day(b)))
            } else {
                0
            };
        }
        let mut count = if self.day_matches(day_a) {
            self.runs_within_day(Some(second_of_day(a)), None)
        } else {
            0
        };
        let per_day =
            u64::from(self.minute.bits.count_ones()) * u64::from(self.hour.bits.count_ones());
        let mut day = day_a;
        for _ in 0..MISSED_COUNT_CAP_DAYS {
            day = match day.tomorrow() {
                Ok(d) => d,
                Err(_) => return count,
            };
            if day == day_b {
                if self.day_matches(day) {
                    count += self.runs_within_day(None, Some(second_of_day(b)));
                }
                return count;
            }
            if self.day_matches(day) {
                count += per_day;
            }
        }
        count
    }

    /// The equivalent croner expression: plain number lists, or `*` where robfig sets
    /// the star bit (for the day fields) or where every value is selected (elsewhere).
    fn to_croner(self) -> String {
        CronField::ALL
            .iter()
            .map(|&field| {
                let set = self.field(field);
                let (min, max) = field.bounds();
                let full = (min..=max).all(|v| set.has(v));
                let day_field = matches!(field, CronField::DayOfMonth | CronField::DayOfWeek);
                if set.star || (full && !day_field) {
                    "*".to_owned()
                } else {
                    set.values()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Rejects croner/Quartz extensions in one list element, with a precise message.
fn check_extensions(field: CronField, token: &str) -> Result<(), ScheduleErrorKind> {
    let upper = token.to_ascii_uppercase();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let feature = if upper.contains('#') {
        Some("`#` (nth weekday of the month)")
    } else if upper.contains('+') {
        Some("`+` (AND matching of day-of-month and day-of-week)")
    } else if field == CronField::DayOfMonth
        && (upper == "L" || upper == "LW" || upper.starts_with("L-"))
    {
        Some("`L` (last day of the month)")
    } else if field == CronField::DayOfMonth && upper.strip_suffix('W').is_some_and(digits) {
        Some("`W` (nearest weekday)")
    } else if field == CronField::DayOfWeek
        && (upper == "L" || upper.strip_suffix('L').is_some_and(digits))
    {
        Some("`L` (last weekday of the month)")
    } else {
        None
    };
    match feature {
        Some(feature) => Err(ScheduleErrorKind::Extension {
            field,
            token: token.to_owned(),
            feature,
        }),
        None => Ok(()),
    }
}

/// Parses one value: a decimal number or (month, day-of-week) a 3-letter name.
fn parse_value(field: CronField, text: &str, token: &str) -> Result<u32, ScheduleErrorKind> {
    let (min, max) = field.bounds();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(ScheduleErrorKind::OutOfRange {
                field,
                value: text.to_owned(),
            }),
        };
    }
    let lower = text.to_ascii_lowercase();
    match field.names().iter().position(|n| *n == lower) {
        Some(i) => Ok(min + i as u32),
        None => Err(ScheduleErrorKind::InvalidToken {
            field,
            token: token.to_owned(),
        }),
    }
}

/// Parses one field with robfig's `getField`/`getRange` rules.
fn parse_field(field: CronField, text: &str) -> Result<FieldSet, ScheduleErrorKind> {
    let (min, max) = field.bounds();
    let invalid = |token: &str| ScheduleErrorKind::InvalidToken {
        field,
        token: token.to_owned(),
    };
    let mut set = FieldSet::default();
    for token in text.split(',') {
        if token.is_empty() {
            return Err(invalid(text));
        }
        check_extensions(field, token)?;
        let (range, step) = match token.split_once('/') {
            None => (token, None),
            Some((range, step)) => {
                if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(token));
                }
                // Absurdly long steps select only the start, like any step past the end.
                let step = step.parse::<u32>().unwrap_or(u32::MAX);
                if step == 0 {
                    return Err(ScheduleErrorKind::ZeroStep {
                        field,
                        token: token.to_owned(),
                    });
                }
                (range, Some(step))
            }
        };
        let (start, end, star) = if range == "*" || range == "?" {
            (min, max, true)
        } else {
            match range.split_once('-') {
                // `a/n` means `a-max/n`.
                None => {
                    let v = parse_value(field, range, token)?;
                    (v, if step.is_some() { max } else { v }, false)
                }
                Some((a, b)) => {
                    if a.is_empty() || b.is_empty() || b.contains('-') {
                        return Err(invalid(token));
                    }
                    (
                        parse_value(field, a, token)?,
                        parse_value(field, b, token)?,
                        false,
                    )
                }
            }
        };
        if start > end {
            return Err(ScheduleErrorKind::BackwardsRange { field, start, end });
        }
        let step = step.unwrap_or(1);
        let mut v = start;
        while v <= end {
            set.bits |= 1 << v;
            v = v.saturating_add(step);
            if v == u32::MAX {
                break;
            }
        }
        // robfig keeps the star bit for `*` and `*/1` only.
        set.star |= star && step == 1;
    }
    Ok(set)
}

/// Expands a Kubernetes descriptor into its 5 fields.
fn descriptor_fields(expression: &str) -> Result<&'static str, ScheduleErrorKind> {
    Ok(match expression {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other if other.to_ascii_lowercase().starts_with("@every") => {
            return Err(ScheduleErrorKind::Every);
        }
        other => {
            return Err(ScheduleErrorKind::UnknownDescriptor {
                descriptor: other.to_owned(),
            });
        }
    })
}

fn parse_spec(expression: &str) -> Result<Spec, ScheduleErrorKind> {
    if expression.is_empty() {
        return Err(ScheduleErrorKind::Empty);
    }
    if expression.starts_with("TZ=") || expression.starts_with("CRON_TZ=") {
        return Err(ScheduleErrorKind::TimeZonePrefix);
    }
    let fields_text = if expression.starts_with('@') {
        descriptor_fields(expression)?
    } else {
        expression
    };
    let fields: Vec<&str> = fields_text.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(ScheduleErrorKind::FieldCount {
            found: fields.len(),
        });
    }
    let spec = Spec {
        minute: parse_field(CronField::Minute, fields[0])?,
        hour: parse_field(CronField::Hour, fields[1])?,
        day_of_month: parse_field(CronField::DayOfMonth, fields[2])?,
        month: parse_field(CronField::Month, fields[3])?,
        day_of_week: parse_field(CronField::DayOfWeek, fields[4])?,
    };
    if !spec.can_run() {
        return Err(ScheduleErrorKind::NeverRuns {
            day_of_month: fields[2].to_owned(),
            month: fields[3].to_owned(),
        });
    }
    Ok(spec)
}

/// Drops the fraction of a second, rounding towards the past.
fn floor_second(t: Timestamp) -> Timestamp {
    let second = if t.subsec_nanosecond() < 0 {
        t.as_second() - 1
    } else {
        t.as_second()
    };
    Timestamp::from_second(second).unwrap_or(t)
}

/// A validated backup schedule: a Kubernetes CronJob schedule evaluated in UTC.
///
/// Parse with [`Schedule::parse`] (or [`FromStr`], or serde from a string); it displays
/// and serialises as the expression it was parsed from (trimmed).
#[derive(Clone, Debug)]
pub struct Schedule {
    expression: String,
    spec: Spec,
    cron: Cron,
}

impl Schedule {
    /// Parses and validates a crontab expression or descriptor; see the module
    /// documentation for the accepted language.
    pub fn parse(expression: &str) -> Result<Schedule, ScheduleError> {
        let trimmed = expression.trim();
        let error = |kind| ScheduleError {
            expression: expression.to_owned(),
            kind,
        };
        let spec = parse_spec(trimmed).map_err(error)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .alternative_weekdays(false)
            .build()
            .parse(&spec.to_croner())
            .map_err(|e| {
                error(ScheduleErrorKind::Evaluator {
                    message: e.to_string(),
                })
            })?;
        Ok(Schedule {
            expression: trimmed.to_owned(),
            spec,
            cron,
        })
    }

    /// The expression this schedule was parsed from (trimmed).
    pub fn as_str(&self) -> &str {
        &self.expression
    }

    /// The first scheduled time strictly after `t`, or `None` past the range croner and
    /// jiff can represent (year 5000).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = floor_second(t).to_zoned(TimeZone::UTC);
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|z| z.timestamp())
            .filter(|&next| next > t)
    }

    /// The most recent scheduled time at or before `t`, or `None` before year 1.
    ///
    /// Uses croner's backward search, which jumps by year, month and day, so rare
    /// schedules (`@yearly`, `0 0 29 2 *`) cost no more than frequent ones.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let start = floor_second(t).to_zoned(TimeZone::UTC);
        self.cron
            .find_previous_occurrence(&start, true)
            .ok()
            .map(|z| z.timestamp())
            .filter(|&latest| latest <= t)
    }

    /// Number of scheduled times in `(after, until]`, exact unless the span exceeds
    /// [`MISSED_COUNT_CAP_DAYS`] days, in which case only the first that many days are
    /// counted.
    pub fn count_between(&self, after: Timestamp, until: Timestamp) -> u64 {
        self.spec.count_between(after, until)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

impl Eq for Schedule {}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.expression)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expression = String::deserialize(deserializer)?;
        Schedule::parse(&expression).map_err(serde::de::Error::custom)
    }
}

/// What is known about a volume's past backups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunHistory {
    /// When the last backup was started, whether or not it succeeded.
    pub last_attempt: Option<Timestamp>,
    /// When the last successful backup was started.
    pub last_success: Option<Timestamp>,
}

/// Whether a backup is due, from [`decide`].
///
/// To serve the most overdue volumes first, sort by [`Due::sort_key`] ascending: due
/// entries before not-due ones, due entries by `since` (oldest first), not-due entries by
/// `next`. Break ties with something stable such as the volume's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing to do before `next`.
    NotDue {
        /// The next scheduled time.
        next: Timestamp,
    },
    /// A backup is due. `since` is the earliest scheduled time not yet covered by a run
    /// (what "most overdue" sorts by, oldest first); `missed` counts scheduled times
    /// that passed without a run, beyond the one being served now (0 in the normal
    /// case); a long outage yields ONE backup, with `missed` = the intervals skipped.
    Due {
        /// The earliest scheduled time not covered by a run (or now, for a first run).
        since: Timestamp,
        /// Scheduled times skipped beyond the one served now.
        missed: u64,
    },
}

impl Due {
    /// Whether a backup should start now.
    pub fn is_due(&self) -> bool {
        matches!(self, Due::Due { .. })
    }

    /// Orders entries most overdue first: `(false, since)` when due, `(true, next)`
    /// when not, to be sorted ascending.
    pub fn sort_key(&self) -> (bool, Timestamp) {
        match *self {
            Due::Due { since, .. } => (false, since),
            Due::NotDue { next } => (true, next),
        }
    }
}

/// Decides whether a backup is due at `now`. Pure: no clock, no I/O.
///
/// * The reference is the last attempt, successful or not (a failed backup is retried at
///   the next scheduled time, not in a tight loop), falling back to the last success; if
///   both are recorded, the later of the two.
/// * No run ever recorded: due now, `since = now`, `missed = 0`, so a new volume is
///   protected before its first slot.
/// * A reference in the future (clock skew): not due, `next` = the first scheduled time
///   after the reference.
/// * Otherwise, with `s` the latest scheduled time at or before `now`: if the reference
///   is at or after `s`, not due with `next` = the first scheduled time after `now`;
///   else due with `since` = the first scheduled time after the reference and `missed` =
///   the scheduled times in `(reference, now]` minus the one served now.
///
/// Missed runs are counted day by day, for at most [`MISSED_COUNT_CAP_DAYS`] days (about
/// 273 years), so even a per-minute schedule after a years-long outage costs
/// milliseconds; beyond the cap `missed` is a lower bound. A `next` beyond the
/// representable range (year 5000) is reported as [`Timestamp::MAX`].
pub fn decide(schedule: &Schedule, history: &RunHistory, now: Timestamp) -> Due {
    let reference = match (history.last_attempt, history.last_success) {
        (Some(a), Some(s)) => a.max(s),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => {
            return Due::Due {
                since: now,
                missed: 0,
            };
        }
    };
    let not_due_after = |t| Due::NotDue {
        next: schedule.next_after(t).unwrap_or(Timestamp::MAX),
    };
    if reference > now {
        return not_due_after(reference);
    }
    match schedule.latest_at_or_before(now) {
        Some(slot) if reference < slot => Due::Due {
            since: schedule.next_after(reference).unwrap_or(slot).min(slot),
            missed: schedule.count_between(reference, now).saturating_sub(1),
        },
        _ => not_due_after(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sched(expr: &str) -> Schedule {
        Schedule::parse(expr).unwrap_or_else(|e| panic!("{e}"))
    }

    fn next(expr: &str, t: &str) -> Timestamp {
        sched(expr).next_after(ts(t)).unwrap()
    }

    fn latest(expr: &str, t: &str) -> Timestamp {
        sched(expr).latest_at_or_before(ts(t)).unwrap()
    }

    /// The first `n` scheduled times after `t`.
    fn run(expr: &str, t: &str, n: usize) -> Vec<String> {
        let s = sched(expr);
        let mut t = ts(t);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.to_string()
            })
            .collect()
    }

    fn err(expr: &str) -> String {
        Schedule::parse(expr).unwrap_err().to_string()
    }

    fn weekday(date: &str) -> jiff::civil::Weekday {
        date.parse::<Date>().unwrap().weekday()
    }

    #[test]
    fn calendar_facts_used_below() {
        use jiff::civil::Weekday::*;
        assert_eq!(weekday("2026-11-22"), Sunday);
        assert_eq!(weekday("2026-11-23"), Monday);
        assert_eq!(weekday("2026-11-13"), Friday);
        assert_eq!(weekday("2026-11-01"), Sunday);
        assert_eq!(weekday("2026-12-01"), Tuesday);
        assert_eq!(weekday("2026-12-13"), Sunday);
        assert_eq!(weekday("2027-01-01"), Friday);
    }

    #[test]
    fn hourly() {
        assert_eq!(
            next("@hourly", "2026-11-23T10:00:00Z"),
            ts("2026-11-23T11:00:00Z")
        );
        assert_eq!(
            next("@hourly", "2026-11-23T10:59:59Z"),
            ts("2026-11-23T11:00:00Z")
        );
        assert_eq!(
            latest("@hourly", "2026-11-23T10:59:59Z"),
            ts("2026-11-23T10:00:00Z")
        );
        assert_eq!(
            latest("@hourly", "2026-11-23T10:00:00Z"),
            ts("2026-11-23T10:00:00Z")
        );
    }

    #[test]
    fn next_after_is_strict_and_handles_fractions() {
        let s = sched("@hourly");
        let at = ts("2026-11-23T10:00:00Z");
        assert_eq!(s.next_after(at), Some(ts("2026-11-23T11:00:00Z")));
        let half_past = ts("2026-11-23T10:00:00.5Z");
        assert_eq!(s.next_after(half_past), Some(ts("2026-11-23T11:00:00Z")));
        assert_eq!(s.latest_at_or_before(half_past), Some(at));
        let just_before = ts("2026-11-23T09:59:59.999Z");
        assert_eq!(s.next_after(just_before), Some(at));
        assert_eq!(
            s.latest_at_or_before(just_before),
            Some(ts("2026-11-23T09:00:00Z"))
        );
    }

    #[test]
    fn daily_and_midnight() {
        for expr in ["@daily", "@midnight", "0 0 * * *"] {
            assert_eq!(
                next(expr, "2026-11-23T00:00:00Z"),
                ts("2026-11-24T00:00:00Z")
            );
            assert_eq!(
                latest(expr, "2026-11-23T23:59:59Z"),
                ts("2026-11-23T00:00:00Z")
            );
        }
    }

    #[test]
    fn weekly_is_sunday_midnight() {
        assert_eq!(
            next("@weekly", "2026-11-23T00:00:00Z"),
            ts("2026-11-29T00:00:00Z")
        );
        assert_eq!(
            latest("@weekly", "2026-11-23T00:00:00Z"),
            ts("2026-11-22T00:00:00Z")
        );
        assert_eq!(
            latest("@weekly", "2026-11-22T00:00:00Z"),
            ts("2026-11-22T00:00:00Z")
        );
    }

    #[test]
    fn monthly_and_yearly() {
        assert_eq!(
            next("@monthly", "2026-11-15T00:00:00Z"),
            ts("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            latest("@monthly", "2026-11-15T00:00:00Z"),
            ts("2026-11-01T00:00:00Z")
        );
        for expr in ["@yearly", "@annually"] {
            assert_eq!(
                next(expr, "2026-06-01T00:00:00Z"),
                ts("2027-01-01T00:00:00Z")
            );
            assert_eq!(
                latest(expr, "2026-06-01T00:00:00Z"),
                ts("2026-01-01T00:00:00Z")
            );
            assert_eq!(
                latest(expr, "2026-01-01T00:00:00Z"),
                ts("2026-01-01T00:00:00Z")
            );
        }
    }

    #[test]
    fn every_fifteen_minutes() {
        assert_eq!(
            next("*/15 * * * *", "2026-11-23T10:07:00Z"),
            ts("2026-11-23T10:15:00Z")
        );
        assert_eq!(
            next("*/15 * * * *", "2026-11-23T10:45:00Z"),
            ts("2026-11-23T11:00:00Z")
        );
        assert_eq!(
            latest("*/15 * * * *", "2026-11-23T10:14:59Z"),
            ts("2026-11-23T10:00:00Z")
        );
        assert_eq!(
            run("*/15 * * * *", "2026-11-23T23:30:00Z", 3),
            [
                "2026-11-23T23:45:00Z",
                "2026-11-24T00:00:00Z",
                "2026-11-24T00:15:00Z"
            ]
        );
    }

    #[test]
    fn weekdays_are_numbered_from_sunday() {
        // Saturday 2026-11-21 04:00 -> Monday 2026-11-23 03:00.
        assert_eq!(
            next("0 3 * * 1-5", "2026-11-21T04:00:00Z"),
            ts("2026-11-23T03:00:00Z")
        );
        // Monday 02:00 -> the previous run was Friday 2026-11-20 03:00.
        assert_eq!(
            latest("0 3 * * 1-5", "2026-11-23T02:00:00Z"),
            ts("2026-11-20T03:00:00Z")
        );
        assert_eq!(
            next("0 3 * * MON-FRI", "2026-11-21T04:00:00Z"),
            ts("2026-11-23T03:00:00Z")
        );
        // Sunday is 0, and names are case-insensitive.
        for expr in ["0 0 * * 0", "0 0 * * SUN", "0 0 * * sun", "0 0 * * Sun"] {
            assert_eq!(
                next(expr, "2026-11-23T00:00:00Z"),
                ts("2026-11-29T00:00:00Z"),
                "{expr}"
            );
            assert_eq!(
                latest(expr, "2026-11-23T00:00:00Z"),
                ts("2026-11-22T00:00:00Z"),
                "{expr}"
            );
        }
        // Saturday is 6.
        assert_eq!(
            next("0 0 * * 6", "2026-11-22T00:00:00Z"),
            ts("2026-11-28T00:00:00Z")
        );
    }

    #[test]
    fn both_day_fields_restricted_means_or() {
        // The 1st, the 15th, and every Monday (2026-11-01 and -15 are Sundays).
        assert_eq!(
            run("0 0 1,15 * 1", "2026-10-31T12:00:00Z", 8),
            [
                "2026-11-01T00:00:00Z",
                "2026-11-02T00:00:00Z",
                "2026-11-09T00:00:00Z",
                "2026-11-15T00:00:00Z",
                "2026-11-16T00:00:00Z",
                "2026-11-23T00:00:00Z",
                "2026-11-30T00:00:00Z",
                "2026-12-01T00:00:00Z",
            ]
        );
        // Not "Friday the 13th": every 13th and every Friday.
        assert_eq!(
            run("0 0 13 * 5", "2026-12-01T00:00:00Z", 6),
            [
                "2026-12-04T00:00:00Z",
                "2026-12-11T00:00:00Z",
                "2026-12-13T00:00:00Z",
                "2026-12-18T00:00:00Z",
                "2026-12-25T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ]
        );
    }

    #[test]
    fn star_bit_rules_follow_robfig() {
        // `*/1` and `?` keep the star bit: the weekday decides (Mondays only).
        for expr in ["0 0 */1 * 1", "0 0 ? * 1", "0 0 *,5 * 1"] {
            assert_eq!(
                run(expr, "2026-11-20T00:00:00Z", 2),
                ["2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"],
                "{expr}"
            );
        }
        // A range covering every day has no star bit: OR with Mondays = every day.
        assert_eq!(
            run("0 0 1-31 * 1", "2026-11-20T00:00:00Z", 2),
            ["2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"]
        );
        // `*/2` has no star bit either: odd days OR Mondays.
        assert_eq!(
            run("0 0 */2 * 1", "2026-11-20T00:00:00Z", 3),
            [
                "2026-11-21T00:00:00Z",
                "2026-11-23T00:00:00Z",
                "2026-11-25T00:00:00Z"
            ]
        );
        // `?` anywhere means `*`; `a/n` means `a-max/n`.
        assert_eq!(
            next("? ? ? ? ?", "2026-11-20T00:00:00Z"),
            ts("2026-11-20T00:01:00Z")
        );
        assert_eq!(
            run("5/20 * * * *", "2026-11-20T00:00:00Z", 4),
            [
                "2026-11-20T00:05:00Z",
                "2026-11-20T00:25:00Z",
                "2026-11-20T00:45:00Z",
                "2026-11-20T01:05:00Z",
            ]
        );
        assert_eq!(
            run("10-20/5 8 * * *", "2026-11-20T00:00:00Z", 4),
            [
                "2026-11-20T08:10:00Z",
                "2026-11-20T08:15:00Z",
                "2026-11-20T08:20:00Z",
                "2026-11-21T08:10:00Z",
            ]
        );
    }

    #[test]
    fn exact_boundaries() {
        let s = sched("30 2 * * *");
        assert_eq!(
            s.latest_at_or_before(ts("2026-11-23T02:30:00Z")),
            Some(ts("2026-11-23T02:30:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(ts("2026-11-23T02:29:59Z")),
            Some(ts("2026-11-22T02:30:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-11-23T02:30:00Z")),
            Some(ts("2026-11-24T02:30:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-11-23T02:29:59Z")),
            Some(ts("2026-11-23T02:30:00Z"))
        );
        let history = RunHistory {
            last_attempt: Some(ts("2026-11-22T02:30:07Z")),
            last_success: Some(ts("2026-11-22T02:30:07Z")),
        };
        assert_eq!(
            decide(&s, &history, ts("2026-11-23T02:30:00Z")),
            Due::Due {
                since: ts("2026-11-23T02:30:00Z"),
                missed: 0
            }
        );
        assert_eq!(
            decide(&s, &history, ts("2026-11-23T02:29:59Z")),
            Due::NotDue {
                next: ts("2026-11-23T02:30:00Z")
            }
        );
    }

    #[test]
    fn month_names() {
        assert_eq!(
            run("0 0 1 JAN,jul *", "2026-02-01T00:00:00Z", 3),
            [
                "2026-07-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
                "2027-07-01T00:00:00Z"
            ]
        );
        assert_eq!(
            run("0 0 1 feb-Apr *", "2026-02-01T00:00:00Z", 3),
            [
                "2026-03-01T00:00:00Z",
                "2026-04-01T00:00:00Z",
                "2027-02-01T00:00:00Z"
            ]
        );
    }

    #[test]
    fn leap_day() {
        let s = sched("0 0 29 2 *");
        assert_eq!(
            s.latest_at_or_before(ts("2027-06-01T00:00:00Z")),
            Some(ts("2024-02-29T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2027-06-01T00:00:00Z")),
            Some(ts("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(ts("2028-06-01T00:00:00Z")),
            Some(ts("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(ts("2028-02-28T23:59:59Z")),
            Some(ts("2024-02-29T00:00:00Z"))
        );
        // 2100 is not a leap year.
        assert_eq!(
            s.next_after(ts("2096-03-01T00:00:00Z")),
            Some(ts("2104-02-29T00:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(ts("2104-01-01T00:00:00Z")),
            Some(ts("2096-02-29T00:00:00Z"))
        );
        assert_eq!(
            s.count_between(ts("2020-01-01T00:00:00Z"), ts("2030-01-01T00:00:00Z")),
            3
        );
    }

    #[test]
    fn search_limits_return_none_quickly() {
        let s = sched("0 0 29 2 *");
        assert_eq!(s.next_after(Timestamp::MAX), None);
        assert_eq!(s.latest_at_or_before(Timestamp::MIN), None);
        assert_eq!(sched("@hourly").next_after(Timestamp::MAX), None);
    }

    #[test]
    fn errors() {
        assert_eq!(
            err("0 3 * * 8"),
            "schedule \"0 3 * * 8\": day-of-week 8 is out of range 0-6 (0 = Sunday); expected a \
             standard 5-field crontab expression such as \"0 3 * * *\" or @daily"
        );
        let cases: &[(&str, &str)] = &[
            ("0 0 3 * * *", "seconds field"),
            ("0 0 3 * * * 2026", "7 fields"),
            ("0 3 * * 7", "use 0 or SUN"),
            ("60 * * * *", "minute 60 is out of range 0-59"),
            ("0 24 * * *", "hour 24 is out of range 0-23"),
            ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
            ("0 0 1 13 *", "month 13 is out of range"),
            ("0 0 L * *", "`L` (last day of the month)"),
            ("0 0 15W * *", "`W` (nearest weekday)"),
            ("0 0 * * 5L", "`L` (last weekday"),
            ("0 0 * * 5#3", "`#` (nth weekday"),
            ("0 0 1 * +1", "`+` (AND matching"),
            ("+5 * * * *", "`+`"),
            (
                "@every 1h",
                "@every is not supported by CronJob-style schedules",
            ),
            ("@reboot", "unknown descriptor \"@reboot\""),
            ("@DAILY", "lowercase"),
            ("CRON_TZ=UTC 0 3 * * *", "CRON_TZ= prefixes are not allowed"),
            ("TZ=Europe/Paris 0 3 * * *", "TZ= and CRON_TZ="),
            ("", "is empty"),
            ("   ", "is empty"),
            ("* * *", "has 3 fields, but needs exactly 5"),
            ("5-1 * * * *", "minute range 5-1 runs backwards"),
            ("*/0 * * * *", "step of 0"),
            ("1,,2 * * * *", "minute \"1,,2\" is not a valid"),
            ("*-5 * * * *", "minute \"*-5\" is not a valid"),
            ("1-2-3 * * * *", "is not a valid"),
            ("*/x * * * *", "is not a valid"),
            ("0 0 * * monday", "day-of-week \"monday\" is not a valid"),
            ("0 0 1 sun *", "month \"sun\" is not a valid"),
            ("0 0 30 2 *", "never occurs in month \"2\""),
            ("0 0 31 4,6,9,11 *", "would never run"),
            ("99999999999 * * * *", "minute 99999999999 is out of range"),
        ];
        for (expr, needle) in cases {
            let message = err(expr);
            assert!(message.contains(needle), "{expr:?}: {message}");
            assert!(
                message.starts_with(&format!("schedule {expr:?}: ")),
                "{message}"
            );
            assert!(message.ends_with(EXPECTED), "{message}");
        }
        let e = Schedule::parse("0 3 * * 8").unwrap_err();
        assert_eq!(e.expression, "0 3 * * 8");
        assert_eq!(
            e.kind,
            ScheduleErrorKind::OutOfRange {
                field: CronField::DayOfWeek,
                value: "8".to_owned()
            }
        );
    }

    #[test]
    fn accepted_oddities() {
        // Days that exist only in some months are fine; Feb 30 with the 1st is fine too.
        for expr in [
            "0 0 31 * *",
            "0 0 30,1 2 *",
            "0 0 30 2 1",
            "  @daily  ",
            "00 03 * * *",
        ] {
            sched(expr);
        }
        assert_eq!(sched("  @daily  ").to_string(), "@daily");
        // A huge step selects only the start.
        assert_eq!(
            run("3/99999999999 * * * *", "2026-11-20T00:00:00Z", 2),
            ["2026-11-20T00:03:00Z", "2026-11-20T01:03:00Z"]
        );
    }

    #[test]
    fn display_from_str_and_serde() {
        let s: Schedule = "0 3 * * MON-FRI".parse().unwrap();
        assert_eq!(s.to_string(), "0 3 * * MON-FRI");
        assert_eq!(s.as_str(), "0 3 * * MON-FRI");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"0 3 * * MON-FRI\"");
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let bad = serde_json::from_str::<Schedule>("\"0 3 * * 8\"").unwrap_err();
        assert!(
            bad.to_string().contains("day-of-week 8 is out of range"),
            "{bad}"
        );
    }

    /// Minute-by-minute reference matcher built on the validated field sets.
    fn brute_matches(s: &Schedule, t: Timestamp) -> bool {
        let dt = TimeZone::UTC.to_datetime(t);
        dt.second() == 0
            && dt.subsec_nanosecond() == 0
            && s.spec.minute.has(dt.minute() as u32)
            && s.spec.hour.has(dt.hour() as u32)
            && s.spec.day_matches(dt.date())
    }

    #[test]
    fn croner_agrees_with_robfig_rules() {
        let exprs = [
            "*/7 * * * *",
            "0 3 * * 1-5",
            "0 0 1,15 * 1",
            "0 0 13 * 5",
            "0 0 */1 * 1",
            "0 0 */2 * 1",
            "0 0 1-31 * 0",
            "30 */5 * JAN,jul,Dec SUN",
            "15 4 */10 * ?",
            "0 12 * * 0,6",
            "5 4 8-14 * 2",
            "0 0 * 2 *",
        ];
        // A fixed linear congruential sequence of start times in 2024-2027.
        let mut seed: u64 = 0x5eed;
        let base = ts("2024-01-01T00:00:00Z").as_second();
        for expr in exprs {
            let s = sched(expr);
            for _ in 0..12 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let start =
                    Timestamp::from_second(base + (seed >> 33) as i64 % (4 * 365 * 86400)).unwrap();
                // Forward: every matching minute before croner's answer is absent.
                let got = s.next_after(start).unwrap();
                assert!(brute_matches(&s, got), "{expr}: {got} does not match");
                let mut t = floor_second(start);
                let mut minute =
                    Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60) + 60)
                        .unwrap();
                while minute < got {
                    assert!(
                        !brute_matches(&s, minute),
                        "{expr}: skipped {minute} after {start}"
                    );
                    minute += jiff::SignedDuration::from_secs(60);
                }
                // Backward: likewise.
                let got = s.latest_at_or_before(start).unwrap();
                assert!(brute_matches(&s, got), "{expr}: {got} does not match");
                t = Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60)).unwrap();
                while t > got {
                    assert!(!brute_matches(&s, t), "{expr}: skipped {t} before {start}");
                    t -= jiff::SignedDuration::from_secs(60);
                }
                // Counting agrees with stepping.
                let until = start + jiff::SignedDuration::from_hours(24 * 9);
                let mut stepped = 0;
                let mut at = start;
                while let Some(n) = s.next_after(at).filter(|&n| n <= until) {
                    stepped += 1;
                    at = n;
                }
                assert_eq!(
                    s.count_between(start, until),
                    stepped,
                    "{expr} from {start}"
                );
            }
        }
    }

    fn attempted(t: &str) -> RunHistory {
        RunHistory {
            last_attempt: Some(ts(t)),
            last_success: Some(ts(t)),
        }
    }

    #[test]
    fn decide_first_run_is_due_now() {
        let now = ts("2026-11-23T10:17:00Z");
        assert_eq!(
            decide(&sched("@daily"), &RunHistory::default(), now),
            Due::Due {
                since: now,
                missed: 0
            }
        );
    }

    #[test]
    fn decide_not_due_and_due_after_slot() {
        let s = sched("@hourly");
        let history = attempted("2026-11-23T10:00:12Z");
        assert_eq!(
            decide(&s, &history, ts("2026-11-23T10:40:00Z")),
            Due::NotDue {
                next: ts("2026-11-23T11:00:00Z")
            }
        );
        assert_eq!(
            decide(&s, &history, ts("2026-11-23T11:00:30Z")),
            Due::Due {
                since: ts("2026-11-23T11:00:00Z"),
                missed: 0
            }
        );
        // Only last_success recorded (e.g. history migrated from elsewhere).
        let history = RunHistory {
            last_attempt: None,
            last_success: Some(ts("2026-11-23T10:00:12Z")),
        };
        assert!(decide(&s, &history, ts("2026-11-23T11:00:30Z")).is_due());
    }

    #[test]
    fn decide_failed_attempt_is_retried_at_next_slot_only() {
        let s = sched("@hourly");
        // The 10:00 run failed; the last success is from 08:00.
        let history = RunHistory {
            last_attempt: Some(ts("2026-11-23T10:00:05Z")),
            last_success: Some(ts("2026-11-23T08:00:04Z")),
        };
        for now in [
            "2026-11-23T10:00:06Z",
            "2026-11-23T10:30:00Z",
            "2026-11-23T10:59:59Z",
        ] {
            assert_eq!(
                decide(&s, &history, ts(now)),
                Due::NotDue {
                    next: ts("2026-11-23T11:00:00Z")
                },
                "{now}"
            );
        }
        assert_eq!(
            decide(&s, &history, ts("2026-11-23T11:00:00Z")),
            Due::Due {
                since: ts("2026-11-23T11:00:00Z"),
                missed: 0
            }
        );
    }

    #[test]
    fn decide_long_outage_is_one_backup() {
        let s = sched("@hourly");
        // Last attempt 10 days ago, a few minutes after the 12:00 slot. The scheduled
        // times in (2026-11-13T12:05, 2026-11-23T12:30] are 2026-11-13T13:00 through
        // 2026-11-23T12:00: 11 on the 13th (13:00-23:00), 24 on each of the 9 days 14th-22nd,
        // 13 on the 23rd (00:00-12:00) = 11 + 216 + 13 = 240. One is served now, so 239
        // were missed, and the backup is overdue since the first of them.
        let history = attempted("2026-11-13T12:05:00Z");
        assert_eq!(
            decide(&s, &history, ts("2026-11-23T12:30:00Z")),
            Due::Due {
                since: ts("2026-11-13T13:00:00Z"),
                missed: 239
            }
        );
        // A per-minute schedule after a year (365 days, 2026 is not a leap year): 525 600
        // times in (ref, now], counted day by day, without stepping each minute.
        let history = attempted("2025-11-23T00:00:00Z");
        assert_eq!(
            decide(&sched("* * * * *"), &history, ts("2026-11-23T00:00:00Z")),
            Due::Due {
                since: ts("2025-11-23T00:01:00Z"),
                missed: 525_599
            }
        );
        // Past the cap the count is a lower bound, and still quick.
        let history = attempted("1000-01-01T00:00:00Z");
        let Due::Due { missed, .. } =
            decide(&sched("* * * * *"), &history, ts("2026-11-23T00:00:00Z"))
        else {
            panic!("not due");
        };
        // 1439 minutes after midnight on the first day, then the capped full days.
        assert_eq!(missed, 1439 + MISSED_COUNT_CAP_DAYS * 1440 - 1);
    }

    #[test]
    fn decide_clock_skew() {
        let s = sched("@hourly");
        // The last attempt claims to be from 13:20, but now is 11:30.
        let history = attempted("2026-11-23T13:20:00Z");
        assert_eq!(
            decide(&s, &history, ts("2026-11-23T11:30:00Z")),
            Due::NotDue {
                next: ts("2026-11-23T14:00:00Z")
            }
        );
    }

    #[test]
    fn decide_most_overdue_first() {
        let s = sched("@hourly");
        let now = ts("2026-11-23T12:30:00Z");
        let mut volumes = [
            ("fresh", decide(&s, &attempted("2026-11-23T12:00:03Z"), now)),
            ("new", decide(&s, &RunHistory::default(), now)),
            (
                "day-old",
                decide(&s, &attempted("2026-11-22T12:00:00Z"), now),
            ),
            (
                "hour-old",
                decide(&s, &attempted("2026-11-23T11:00:02Z"), now),
            ),
            (
                "skewed",
                decide(&s, &attempted("2026-11-23T15:00:00Z"), now),
            ),
        ];
        volumes.sort_by_key(|(name, due)| (due.sort_key(), *name));
        let order: Vec<_> = volumes.iter().map(|(name, _)| *name).collect();
        assert_eq!(order, ["day-old", "hour-old", "new", "fresh", "skewed"]);
        assert_eq!(
            volumes[0].1,
            Due::Due {
                since: ts("2026-11-22T13:00:00Z"),
                missed: 23
            }
        );
        assert!(!volumes[3].1.is_due());
    }
}
