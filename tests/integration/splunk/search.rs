//! The part of Splunk's search language that the app's event types use:
//! `field=value` terms (value quoted or not, `*` a wildcard, matched without
//! regard to case, true when any value of a multivalue field matches, false
//! when the field is missing), `NOT`, `OR`, `AND` (also implied between
//! terms), and parentheses. As in Splunk, `OR` binds tighter than `AND`.
//! Anything else (free text, `!=`, `IN`, indexed `::` terms, `eventtype=`,
//! `tag=`) is an error.

use super::eval::Fields;
use super::syntax::{self, Cursor};

#[derive(Debug, Clone, PartialEq)]
pub enum Search {
    All(Vec<Search>),
    Any(Vec<Search>),
    Not(Box<Search>),
    Term { field: String, pattern: String },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Word(String),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '(' || c == ')' {
            chars.next();
            out.push(if c == '(' { Token::Open } else { Token::Close });
            continue;
        }
        // A word runs to whitespace or a parenthesis outside quotes; quotes
        // are kept so a term can tell a quoted value.
        let mut word = String::new();
        let mut quoted = false;
        while let Some(&w) = chars.peek() {
            if !quoted && (w.is_whitespace() || w == '(' || w == ')') {
                break;
            }
            chars.next();
            if w == '\\' && quoted {
                match chars.next() {
                    Some(e @ ('"' | '\\')) => word.push(e),
                    other => return Err(format!("escape \\{other:?} not implemented")),
                }
                continue;
            }
            if w == '"' {
                quoted = !quoted;
            }
            word.push(w);
        }
        if quoted {
            return Err(format!("unterminated quote in {word}"));
        }
        out.push(Token::Word(word));
    }
    Ok(out)
}

struct Parser {
    tokens: Cursor<Token>,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.peek()
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == k)
    }

    /// Terms joined by AND, written or implied.
    fn all(&mut self) -> Result<Search, String> {
        let mut parts = vec![self.any()?];
        loop {
            if self.keyword("AND") {
                self.tokens.next();
            } else if matches!(self.peek(), None | Some(Token::Close)) {
                break;
            }
            parts.push(self.any()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Search::All(parts)
        })
    }

    fn any(&mut self) -> Result<Search, String> {
        let mut parts = vec![self.not()?];
        while self.keyword("OR") {
            self.tokens.next();
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Search::Any(parts)
        })
    }

    fn not(&mut self) -> Result<Search, String> {
        if self.keyword("NOT") {
            self.tokens.next();
            return Ok(Search::Not(Box::new(self.not()?)));
        }
        let token = self.tokens.next();
        match token {
            Some(Token::Open) => {
                let inner = self.all()?;
                match self.tokens.next() {
                    Some(Token::Close) => Ok(inner),
                    other => Err(format!("expected ), found {other:?}")),
                }
            }
            Some(Token::Word(word)) => term(&word),
            other => Err(format!("expected a term, found {other:?}")),
        }
    }
}

fn term(word: &str) -> Result<Search, String> {
    let unsupported = |what: &str| Err(format!("{what} not implemented: {word}"));
    if matches!(word, "AND" | "OR" | "NOT") {
        return unsupported("a dangling operator");
    }
    if word.contains("!=") {
        return unsupported("!=");
    }
    if word.contains("::") {
        return unsupported("an indexed-field term");
    }
    let Some((field, value)) = word.split_once('=') else {
        return unsupported("a free-text term");
    };
    if field.is_empty() || field.contains('"') || field.contains(['<', '>']) {
        return unsupported("this field name or comparison");
    }
    if matches!(field, "eventtype" | "tag") || field.starts_with("tag::") {
        return unsupported("an event type or tag term");
    }
    let pattern = match value.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| format!("text after a quoted value: {word}"))?,
        None if value.contains('"') => return unsupported("a quote inside a value"),
        None => value,
    };
    Ok(Search::Term {
        field: field.to_owned(),
        pattern: pattern.to_owned(),
    })
}

impl Search {
    pub fn parse(text: &str) -> Result<Search, String> {
        let mut parser = Parser {
            tokens: Cursor::new(tokens(text)?),
        };
        let search = parser.all()?;
        match parser.peek() {
            None => Ok(search),
            Some(t) => Err(format!("unexpected {t:?}")),
        }
    }

    pub fn matches(&self, fields: &Fields) -> bool {
        match self {
            Search::All(parts) => parts.iter().all(|p| p.matches(fields)),
            Search::Any(parts) => parts.iter().any(|p| p.matches(fields)),
            Search::Not(inner) => !inner.matches(fields),
            Search::Term { field, pattern } => fields
                .get(field)
                .is_some_and(|values| values.iter().any(|v| wildcard(v, pattern))),
        }
    }
}

/// `*` matches any run of characters; letters match either case.
fn wildcard(value: &str, pattern: &str) -> bool {
    syntax::matches(value, pattern, '*', None, true)
}

#[test]
fn matches_like_splunk() {
    let event: Fields = [
        ("sourcetype", vec!["aws_iot_device_defender"]),
        ("name", vec!["aws:listening-tcp-ports"]),
        ("dest_port", vec!["22", "443"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    let cases = [
        (
            r#"sourcetype=aws_iot_device_defender name="aws:listening-tcp-ports""#,
            true,
        ),
        (r#"name="AWS:Listening-TCP-ports""#, true),
        (r#"name="aws:*""#, true),
        (r#"NOT name="aws:*""#, false),
        ("dest_port=443", true),
        ("dest_port=*", true),
        ("missing=*", false),
        (r#"NOT missing="x""#, true),
        // OR binds tighter than the implied AND.
        (r#"name="x" OR name="aws:*" dest_port=22"#, true),
        (r#"name="x" OR (name="aws:*" dest_port=80)"#, false),
        (r#"(name="x" OR name="y") dest_port=22"#, false),
        (r#"name="aws:*" AND NOT dest_port=80"#, true),
    ];
    for (text, want) in cases {
        let search = Search::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(search.matches(&event), want, "{text}");
    }
}

#[test]
fn refuses_what_it_does_not_implement() {
    for text in [
        "error",
        "name!=x",
        "severity::high",
        "name IN (a, b)",
        "eventtype=x",
        "tag=alert",
        "(name=x",
        "name=\"x",
        "name=x OR",
    ] {
        assert!(Search::parse(text).is_err(), "{text} parsed");
    }
}
