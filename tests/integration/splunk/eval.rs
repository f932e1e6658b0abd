//! The part of Splunk's eval language that the app's `EVAL-<field>` settings
//! use, evaluated with Splunk's rules where they are unambiguous:
//!
//! - a field reference is null when the event lacks the field, a string when
//!   it has one value, a multivalue when it has several;
//! - `if` and `case` treat a null condition as not true;
//! - `==`/`!=` give null when a side is null, and compare numerically when
//!   both sides are numbers;
//! - `mvmap(field, expr)` evaluates `expr` once per value of `field`.
//!
//! Everything else is an error, not a guess: an unknown function, operator
//! or token, a comparison of multivalue fields, a null operand of `AND`/`OR`
//! (guard such operands with an earlier `case` branch). So the app cannot use
//! a construct whose result this evaluator would invent.

use std::collections::BTreeMap;

use super::syntax::{self, Cursor};

/// Search-time fields of one event: name to values (several for a
/// multivalue field).
pub type Fields = BTreeMap<String, Vec<String>>;

/// The functions implemented, with their argument counts.
const FUNCTIONS: &[(&str, &str)] = &[
    ("if", "3"),
    ("case", "an even number of"),
    ("null", "0"),
    ("true", "0"),
    ("like", "2"),
    ("mvmap", "2"),
];

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Str(String),
    Bool(bool),
    Multi(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Field(String),
    Str(String),
    Call(String, Vec<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Comma,
    Eq,
    Ne,
    And,
    Or,
    Str(String),
    Field(String),
    Ident(String),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            '=' | '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err(format!("operator {c} not implemented (only == and != are)"));
                }
                out.push(if c == '=' { Token::Eq } else { Token::Ne });
            }
            '"' | '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated {c}{s}")),
                        Some('\\') if c == '"' => match chars.next() {
                            Some(e @ ('"' | '\\')) => s.push(e),
                            other => {
                                return Err(format!("escape \\{other:?} not implemented"));
                            }
                        },
                        Some(end) if end == c => break,
                        Some(other) => s.push(other),
                    }
                }
                out.push(if c == '"' {
                    Token::Str(s)
                } else {
                    Token::Field(s)
                });
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut word = String::new();
                while let Some(&w) = chars.peek() {
                    if !(w.is_ascii_alphanumeric() || w == '_') {
                        break;
                    }
                    word.push(w);
                    chars.next();
                }
                out.push(match word.as_str() {
                    "AND" => Token::And,
                    "OR" => Token::Or,
                    _ => Token::Ident(word),
                });
            }
            other => {
                return Err(format!(
                    "{other:?} not implemented (numbers, arithmetic, `.` and other operators are not; \
                     quote field names with special characters as 'a.b{{}}')"
                ));
            }
        }
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

    fn next(&mut self) -> Option<Token> {
        self.tokens.next()
    }

    fn expect(&mut self, want: &Token) -> Result<(), String> {
        match self.next() {
            Some(t) if &t == want => Ok(()),
            other => Err(format!("expected {want:?}, found {other:?}")),
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.next();
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.comparison()?;
        while self.peek() == Some(&Token::And) {
            self.next();
            left = Expr::And(Box::new(left), Box::new(self.comparison()?));
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.primary()?;
        match self.peek() {
            Some(Token::Eq) => {
                self.next();
                Ok(Expr::Eq(Box::new(left), Box::new(self.primary()?)))
            }
            Some(Token::Ne) => {
                self.next();
                Ok(Expr::Ne(Box::new(left), Box::new(self.primary()?)))
            }
            _ => Ok(left),
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or()?;
                self.expect(&Token::Close)?;
                Ok(inner)
            }
            Some(Token::Str(s)) => Ok(Expr::Str(s)),
            Some(Token::Field(f)) => Ok(Expr::Field(f)),
            Some(Token::Ident(name)) if self.peek() == Some(&Token::Open) => {
                self.next();
                let mut args = Vec::new();
                if self.peek() != Some(&Token::Close) {
                    loop {
                        args.push(self.or()?);
                        if self.peek() != Some(&Token::Comma) {
                            break;
                        }
                        self.next();
                    }
                }
                self.expect(&Token::Close)?;
                check_call(&name, &args)?;
                Ok(Expr::Call(name, args))
            }
            Some(Token::Ident(name)) => Ok(Expr::Field(name)),
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
}

fn check_call(name: &str, args: &[Expr]) -> Result<(), String> {
    let Some((_, arity)) = FUNCTIONS.iter().find(|(f, _)| *f == name) else {
        let known: Vec<&str> = FUNCTIONS.iter().map(|(f, _)| *f).collect();
        return Err(format!(
            "function {name}() not implemented (implemented: {})",
            known.join(", ")
        ));
    };
    let ok = match name {
        "case" => !args.is_empty() && args.len().is_multiple_of(2),
        _ => arity.parse::<usize>().is_ok_and(|n| n == args.len()),
    };
    if !ok {
        return Err(format!(
            "{name}() takes {arity} arguments, not {}",
            args.len()
        ));
    }
    match (name, args) {
        ("like", [_, Expr::Str(_)]) | ("mvmap", [Expr::Field(_), _]) => Ok(()),
        ("like", _) => Err("like(): the pattern must be a string literal".to_owned()),
        ("mvmap", _) => Err("mvmap(): the first argument must be a field".to_owned()),
        _ => Ok(()),
    }
}

impl Expr {
    pub fn parse(text: &str) -> Result<Expr, String> {
        let mut parser = Parser {
            tokens: Cursor::new(tokens(text)?),
        };
        let expr = parser.or()?;
        match parser.peek() {
            None => Ok(expr),
            Some(t) => Err(format!("unexpected {t:?} after a complete expression")),
        }
    }

    /// Every field the expression reads.
    pub fn fields(&self, out: &mut Vec<String>) {
        match self {
            Expr::Field(f) => out.push(f.clone()),
            Expr::Str(_) => {}
            Expr::Call(_, args) => args.iter().for_each(|a| a.fields(out)),
            Expr::Eq(a, b) | Expr::Ne(a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.fields(out);
                b.fields(out);
            }
        }
    }

    pub fn eval(&self, fields: &Fields) -> Result<Value, String> {
        match self {
            Expr::Field(f) => Ok(match fields.get(f).map(Vec::as_slice) {
                None | Some([]) => Value::Null,
                Some([one]) => Value::Str(one.clone()),
                Some(many) => Value::Multi(many.to_vec()),
            }),
            Expr::Str(s) => Ok(Value::Str(s.clone())),
            Expr::Eq(a, b) => compare(a.eval(fields)?, b.eval(fields)?, true),
            Expr::Ne(a, b) => compare(a.eval(fields)?, b.eval(fields)?, false),
            Expr::And(a, b) => match boolean(a.eval(fields)?, "AND")? {
                false => Ok(Value::Bool(false)),
                true => Ok(Value::Bool(boolean(b.eval(fields)?, "AND")?)),
            },
            Expr::Or(a, b) => match boolean(a.eval(fields)?, "OR")? {
                true => Ok(Value::Bool(true)),
                false => Ok(Value::Bool(boolean(b.eval(fields)?, "OR")?)),
            },
            Expr::Call(name, args) => call(name, args, fields),
        }
    }
}

/// An operand of AND/OR: true or false. Splunk's result for a null operand
/// is not modelled.
fn boolean(v: Value, op: &str) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(b),
        Value::Null => Err(format!(
            "null operand of {op}: guard the field with an earlier case() branch"
        )),
        other => Err(format!("{op} needs true/false operands, not {other:?}")),
    }
}

/// A condition of if/case: only true is true.
fn condition(v: Value, function: &str) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(b),
        Value::Null => Ok(false),
        other => Err(format!(
            "{function}() condition is not true/false: {other:?}"
        )),
    }
}

fn compare(a: Value, b: Value, equal: bool) -> Result<Value, String> {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => Ok(Value::Null),
        (Value::Str(a), Value::Str(b)) => {
            let same = match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => x == y,
                _ => a == b,
            };
            Ok(Value::Bool(same == equal))
        }
        (a, b) => Err(format!(
            "comparison of {a:?} with {b:?} not implemented (multivalue and boolean operands are not)"
        )),
    }
}

fn call(name: &str, args: &[Expr], fields: &Fields) -> Result<Value, String> {
    match name {
        "null" => Ok(Value::Null),
        "true" => Ok(Value::Bool(true)),
        "if" => {
            let pick = if condition(args[0].eval(fields)?, "if")? {
                &args[1]
            } else {
                &args[2]
            };
            pick.eval(fields)
        }
        "case" => {
            for pair in args.chunks(2) {
                if condition(pair[0].eval(fields)?, "case")? {
                    return pair[1].eval(fields);
                }
            }
            Ok(Value::Null)
        }
        "like" => {
            let Expr::Str(pattern) = &args[1] else {
                unreachable!("checked when parsed")
            };
            match args[0].eval(fields)? {
                Value::Null => Ok(Value::Null),
                Value::Str(s) => Ok(Value::Bool(like(&s, pattern))),
                other => Err(format!("like() of {other:?} not implemented")),
            }
        }
        "mvmap" => {
            let Expr::Field(field) = &args[0] else {
                unreachable!("checked when parsed")
            };
            let Some(values) = fields.get(field).filter(|v| !v.is_empty()) else {
                return Ok(Value::Null);
            };
            let mut out = Vec::new();
            let mut one = fields.clone();
            for value in values {
                one.insert(field.clone(), vec![value.clone()]);
                match args[1].eval(&one)? {
                    Value::Null => {}
                    Value::Str(s) => out.push(s),
                    Value::Multi(m) => out.extend(m),
                    Value::Bool(_) => {
                        return Err("mvmap() expression gives true/false".to_owned());
                    }
                }
            }
            Ok(match out.len() {
                0 => Value::Null,
                1 => Value::Str(out.remove(0)),
                _ => Value::Multi(out),
            })
        }
        other => unreachable!("function {other} is checked when parsed"),
    }
}

/// SQL LIKE, as Splunk's like(): `%` any run of characters, `_` one.
fn like(s: &str, pattern: &str) -> bool {
    syntax::matches(s, pattern, '%', Some('_'), false)
}

/// The values an `EVAL-` assigns: none for null. A boolean cannot be a
/// field's value.
pub fn assigned(v: Value) -> Result<Option<Vec<String>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Str(s) => Ok(Some(vec![s])),
        Value::Multi(m) => Ok(Some(m)),
        Value::Bool(_) => {
            Err("the expression gives true/false, which Splunk refuses to assign".to_owned())
        }
    }
}

fn fields(pairs: &[(&str, &[&str])]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

/// Splunk's documented behaviour, one expression at a time.
#[test]
fn evaluates_like_splunk() {
    let event = fields(&[
        ("name", &["aws:listening-tcp-ports"]),
        ("value.ports{}", &["22", "443"]),
        ("one{}", &["7"]),
        ("n", &["10"]),
    ]);
    let s = |v: &str| Value::Str(v.to_owned());
    let cases: Vec<(&str, Value)> = vec![
        (r#"name=="aws:listening-tcp-ports""#, Value::Bool(true)),
        (r#"name!="aws:listening-tcp-ports""#, Value::Bool(false)),
        (r#"missing=="x""#, Value::Null),
        (r#"n=="10.0""#, Value::Bool(true)),
        (r#"if(missing=="x", "yes", "no")"#, s("no")),
        (r#"if(name=="x", "yes", null())"#, Value::Null),
        (r#"case(missing=="x", "a", name=="x", "b")"#, Value::Null),
        (r#"case(missing=="x", "a", true(), "b")"#, s("b")),
        (
            "'value.ports{}'",
            Value::Multi(vec!["22".into(), "443".into()]),
        ),
        (
            r#"mvmap('value.ports{}', "tcp")"#,
            Value::Multi(vec!["tcp".into(), "tcp".into()]),
        ),
        (r#"mvmap('one{}', "udp")"#, s("udp")),
        (r#"mvmap(missing, "udp")"#, Value::Null),
        (r#"like(name, "aws:%-ports")"#, Value::Bool(true)),
        (r#"like(name, "aws:all-%")"#, Value::Bool(false)),
        (r#"like(name, "aws_listening%")"#, Value::Bool(true)),
        (r#"like(missing, "%")"#, Value::Null),
        (r#"name=="x" AND missing=="y""#, Value::Bool(false)),
        (r#"name=="x" OR (n=="10" AND true())"#, Value::Bool(true)),
    ];
    for (text, want) in cases {
        let expr = Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(expr.eval(&event), Ok(want), "{text}");
    }
}

/// What the evaluator does not model is an error, never a guess.
#[test]
fn refuses_what_it_does_not_implement() {
    let event = fields(&[("name", &["x"]), ("multi", &["a", "b"])]);
    for text in [
        "coalesce(name, \"y\")",
        "name.\"suffix\"",
        "len(name)",
        "name=\"x\"",
        "1",
        "if(name==\"x\", \"a\")",
        "like(name, name)",
        "mvmap(\"x\", \"y\")",
        "NOT name==\"x\"",
    ] {
        assert!(Expr::parse(text).is_err(), "{text} parsed");
    }
    for text in [
        "missing==\"x\" AND true()",
        "missing==\"x\" OR true()",
        "multi==\"a\"",
        "if(name, \"a\", \"b\")",
    ] {
        let result = Expr::parse(text).and_then(|e| e.eval(&event));
        assert!(result.is_err(), "{text} gave {result:?}");
    }
    assert!(assigned(Value::Bool(true)).is_err());
}
