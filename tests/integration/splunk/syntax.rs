//! What the eval and search models share: a cursor over tokens, and pattern
//! matching with a many-character wildcard.

/// Tokens and the position of the next one.
pub struct Cursor<T> {
    tokens: Vec<T>,
    at: usize,
}

impl<T: Clone> Cursor<T> {
    pub fn new(tokens: Vec<T>) -> Cursor<T> {
        Cursor { tokens, at: 0 }
    }

    pub fn peek(&self) -> Option<&T> {
        self.tokens.get(self.at)
    }

    pub fn next(&mut self) -> Option<T> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }
}

/// Whether `value` matches `pattern`, where `many` stands for any run of
/// characters and `one` (if any) for exactly one; with `fold_case`, letters
/// match either case.
pub fn matches(value: &str, pattern: &str, many: char, one: Option<char>, fold_case: bool) -> bool {
    fn go(v: &[char], p: &[char], many: char, one: Option<char>, fold: bool) -> bool {
        match p.split_first() {
            None => v.is_empty(),
            Some((&c, rest)) if c == many => {
                (0..=v.len()).any(|i| go(&v[i..], rest, many, one, fold))
            }
            Some((&c, rest)) if Some(c) == one => {
                !v.is_empty() && go(&v[1..], rest, many, one, fold)
            }
            Some((&c, rest)) => {
                v.first()
                    .is_some_and(|&x| x == c || (fold && x.to_lowercase().eq(c.to_lowercase())))
                    && go(&v[1..], rest, many, one, fold)
            }
        }
    }
    let v: Vec<char> = value.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    go(&v, &p, many, one, fold_case)
}
