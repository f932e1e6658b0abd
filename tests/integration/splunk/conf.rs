//! Splunk `.conf` files: stanzas of `key = value` lines, `#` comments, and
//! `\` at the end of a line to continue a value on the next one.

use std::path::Path;

/// One stanza: its name (without brackets) and its settings, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Stanza {
    pub name: String,
    pub settings: Vec<(String, String)>,
}

impl Stanza {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed file. Settings before the first stanza belong to the default
/// stanza, named "default".
#[derive(Debug, Clone, PartialEq)]
pub struct Conf {
    pub stanzas: Vec<Stanza>,
}

impl Conf {
    pub fn read(path: &Path) -> Result<Conf, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Conf::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Conf, String> {
        let mut stanzas = vec![Stanza {
            name: "default".to_owned(),
            settings: Vec::new(),
        }];
        let mut lines = text.lines().enumerate();
        while let Some((n, raw)) = lines.next() {
            let mut line = raw.trim().to_owned();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // A trailing backslash joins the next line, newline kept.
            while line.ends_with('\\') {
                line.pop();
                line.push('\n');
                match lines.next() {
                    Some((_, next)) => line.push_str(next.trim()),
                    None => break,
                }
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name
                    .strip_suffix(']')
                    .ok_or_else(|| format!("line {}: stanza header without ]", n + 1))?;
                if stanzas.iter().any(|s| s.name == name) {
                    return Err(format!("line {}: stanza [{name}] appears twice", n + 1));
                }
                stanzas.push(Stanza {
                    name: name.to_owned(),
                    settings: Vec::new(),
                });
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: neither a stanza nor key = value", n + 1))?;
            let (key, value) = (key.trim(), value.trim());
            let stanza = stanzas
                .last_mut()
                .expect("the default stanza is always there");
            if stanza.get(key).is_some() {
                return Err(format!(
                    "line {}: {key} set twice in [{}]",
                    n + 1,
                    stanza.name
                ));
            }
            stanza.settings.push((key.to_owned(), value.to_owned()));
        }
        if stanzas[0].settings.is_empty() {
            stanzas.remove(0);
        }
        Ok(Conf { stanzas })
    }

    pub fn stanza(&self, name: &str) -> Option<&Stanza> {
        self.stanzas.iter().find(|s| s.name == name)
    }
}

#[test]
fn stanzas_comments_and_continued_lines() {
    let conf =
        Conf::parse("# comment\n[a]\nx = 1\n  y=two words \n\n[b]\nlong = first \\\nsecond\n")
            .expect("parses");
    assert_eq!(conf.stanzas.len(), 2);
    assert_eq!(conf.stanza("a").and_then(|s| s.get("y")), Some("two words"));
    assert_eq!(
        conf.stanza("b").and_then(|s| s.get("long")),
        Some("first \nsecond")
    );
}

#[test]
fn duplicates_and_junk_are_errors() {
    assert!(Conf::parse("[a]\nx=1\nx=2\n").is_err());
    assert!(Conf::parse("[a]\n[a]\n").is_err());
    assert!(Conf::parse("[a]\njust words\n").is_err());
}
