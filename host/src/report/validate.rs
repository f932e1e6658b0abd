//! Validation rules of the Device Defender report. Each rule has its own
//! error variant, and each message names the field and the offending value.

use crate::sample::CustomMetricValue;

/// Longest custom metric name Device Defender accepts.
pub const MAX_METRIC_NAME_LEN: usize = 128;
/// Device Defender keeps at most 15 significant digits of a number.
pub const MAX_SIGNIFICANT_DIGITS: usize = 15;

/// A broken rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("custom metric name {name:?} must be 1 to 128 characters from a-z A-Z 0-9 : _ -")]
    MetricName { name: String },
    #[error("custom metric name {name:?} must not start with the reserved prefix \"aws:\"")]
    ReservedMetricName { name: String },
    #[error("custom metric {name:?}: {value} is not a finite number")]
    NotFinite { name: String, value: f64 },
    #[error("custom metric {name:?}: {value} has more than 15 significant digits")]
    TooPrecise { name: String, value: f64 },
    #[error(
        "custom metric {name:?}: string {value:?} must be non-empty and use only a-z A-Z 0-9 : _ - / ."
    )]
    BadString { name: String, value: String },
    #[error("custom metric {name:?}: {value:?} is not a valid IPv4 or IPv6 address")]
    BadIp { name: String, value: String },
}

/// Checks one custom metric against Device Defender's rules. Device Defender
/// accepts a report with a broken value and then silently drops the value, so
/// checking here is the only way the author ever hears about it.
pub fn custom_metric(name: &str, value: &CustomMetricValue) -> Result<(), ValidationError> {
    metric_name(name)?;
    match value {
        CustomMetricValue::Number(n) => number(name, *n),
        CustomMetricValue::NumberList(list) => list.iter().try_for_each(|n| number(name, *n)),
        CustomMetricValue::StringList(list) => list.iter().try_for_each(|s| string(name, s)),
        CustomMetricValue::IpList(list) => list.iter().try_for_each(|s| {
            s.parse::<std::net::IpAddr>()
                .map(|_| ())
                .map_err(|_| ValidationError::BadIp {
                    name: name.to_owned(),
                    value: s.clone(),
                })
        }),
    }
}

fn metric_name(name: &str) -> Result<(), ValidationError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_METRIC_NAME_LEN || !valid_chars {
        return Err(ValidationError::MetricName {
            name: name.to_owned(),
        });
    }
    if name
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("aws:"))
    {
        return Err(ValidationError::ReservedMetricName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn number(name: &str, n: f64) -> Result<(), ValidationError> {
    if !n.is_finite() {
        return Err(ValidationError::NotFinite {
            name: name.to_owned(),
            value: n,
        });
    }
    if significant_digits(n) > MAX_SIGNIFICANT_DIGITS {
        return Err(ValidationError::TooPrecise {
            name: name.to_owned(),
            value: n,
        });
    }
    Ok(())
}

/// Significant digits of the shortest decimal that round-trips to `n`.
fn significant_digits(n: f64) -> usize {
    // `{:e}` prints the shortest round-tripping mantissa, e.g. 1.2345e3.
    let text = format!("{:e}", n.abs());
    let mantissa = text.split('e').next().unwrap_or("");
    mantissa.bytes().filter(u8::is_ascii_digit).count()
}

fn string(name: &str, s: &str) -> Result<(), ValidationError> {
    // Digits are allowed: AWS's SDK samples list letters and `: _ - / .` only,
    // but rejecting version strings such as `openssh-9.2` would make the type
    // useless; see docs/PLUGINS.md.
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'/' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::BadString {
            name: name.to_owned(),
            value: s.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_metric_rules() {
        let num = CustomMetricValue::Number;
        assert_eq!(custom_metric("ok_name:1-x", &num(3.0)), Ok(()));
        assert_eq!(
            custom_metric("", &num(1.0)).unwrap_err().to_string(),
            "custom metric name \"\" must be 1 to 128 characters from a-z A-Z 0-9 : _ -"
        );
        assert!(custom_metric(&"a".repeat(129), &num(1.0)).is_err());
        assert_eq!(
            custom_metric("AWS:x", &num(1.0)).unwrap_err().to_string(),
            "custom metric name \"AWS:x\" must not start with the reserved prefix \"aws:\""
        );
        assert_eq!(
            custom_metric("n", &num(f64::NAN)).unwrap_err().to_string(),
            "custom metric \"n\": NaN is not a finite number"
        );
        assert_eq!(custom_metric("n", &num(123456789012345.0)), Ok(()));
        assert_eq!(
            custom_metric("n", &num(0.1234567890123456))
                .unwrap_err()
                .to_string(),
            "custom metric \"n\": 0.1234567890123456 has more than 15 significant digits"
        );
        assert!(
            custom_metric(
                "n",
                &CustomMetricValue::NumberList(vec![1.0, f64::INFINITY])
            )
            .is_err()
        );
        assert_eq!(
            custom_metric(
                "s",
                &CustomMetricValue::StringList(vec!["openssh-9.2/x:y_z".into()])
            ),
            Ok(())
        );
        assert_eq!(
            custom_metric("s", &CustomMetricValue::StringList(vec!["a b".into()]))
                .unwrap_err()
                .to_string(),
            "custom metric \"s\": string \"a b\" must be non-empty and use only a-z A-Z 0-9 : _ - / ."
        );
        assert_eq!(
            custom_metric(
                "i",
                &CustomMetricValue::IpList(vec!["10.0.0.1".into(), "2001:db8::1".into()])
            ),
            Ok(())
        );
        assert_eq!(
            custom_metric("i", &CustomMetricValue::IpList(vec!["10.0.0.0/8".into()]))
                .unwrap_err()
                .to_string(),
            "custom metric \"i\": \"10.0.0.0/8\" is not a valid IPv4 or IPv6 address"
        );
    }
}
