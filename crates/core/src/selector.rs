//! Kubernetes label selectors (`k8s.io/apimachinery/pkg/labels/selector.go`):
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, joined by commas.
//! All requirements must hold (AND). The empty selector matches everything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;

use crate::names::{quote, validate_label_value, validate_qualified_name};
use crate::{Error, Result};

/// Something that can answer "what is the value of label `key`?".
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl<S: BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// `k=v` and `k==v` (the same thing; the canonical form is `=`).
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Equals(want), Some(v)) => v == want,
            (Op::In(set), Some(v)) => set.contains(v),
            (Op::Equals(_) | Op::In(_), None) => false,
            // As in Kubernetes, `!=` and `notin` match objects without the label.
            (Op::NotEquals(want), v) => v != Some(want.as_str()),
            (Op::NotIn(set), v) => v.is_none_or(|v| !set.contains(v)),
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &BTreeSet<String>| {
            let joined = s.iter().map(String::as_str).collect::<Vec<_>>().join(",");
            // Only {""} joins to nothing, and `k in ()` is refused; `(,)` reads back
            // as {""}, so the canonical form still parses to an equal selector.
            if joined.is_empty() {
                ",".to_owned()
            } else {
                joined
            }
        };
        match &self.op {
            Op::Equals(v) => write!(f, "{}={v}", self.key),
            Op::NotEquals(v) => write!(f, "{}!={v}", self.key),
            Op::In(s) => write!(f, "{} in ({})", self.key, set(s)),
            Op::NotIn(s) => write!(f, "{} notin ({})", self.key, set(s)),
            Op::Exists => f.write_str(&self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A parsed label selector. Requirements are kept sorted and deduplicated, so equal
/// selectors compare equal and print the same canonical string, whatever the spelling
/// (`a==b , x` and `x,a=b` both print `a=b,x`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// True when the selector has no requirements (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Parses Kubernetes label-selector syntax. Keys must be qualified names and values
    /// label values; the error says what was expected where.
    pub fn parse(input: &str) -> Result<LabelSelector, String> {
        let mut p = Parser {
            tokens: lex(input),
            pos: 0,
        };
        let mut requirements = Vec::new();
        loop {
            match p.peek() {
                Tok::End => break,
                Tok::Ident(_) | Tok::Not => {
                    requirements.push(p.requirement()?);
                    match p.next() {
                        Tok::End => break,
                        Tok::Comma => match p.peek() {
                            Tok::Ident(_) | Tok::Not => {}
                            t => {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.text()
                                ));
                            }
                        },
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.text()
                            ));
                        }
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.text()
                    ));
                }
            }
        }
        requirements.sort();
        requirements.dedup();
        Ok(LabelSelector { requirements })
    }

    /// [`LabelSelector::parse`] for a request field: a parse error becomes
    /// `Error::Invalid` on `field`, quoting the selector.
    pub fn parse_field(field: &str, value: &str) -> Result<LabelSelector> {
        Self::parse(value).map_err(|e| {
            Error::invalid(
                field,
                format!("invalid label selector {}: {e}", quote(value)),
            )
        })
    }

    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &impl Labels) -> bool {
        self.matches_with(|k| labels.label(k))
    }

    /// [`LabelSelector::matches`] with a lookup function, for label sources that are
    /// neither a `HashMap` nor a `BTreeMap`.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(get(&r.key)))
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical form: requirements sorted by key, `=` for equality, set values
    /// sorted, no spaces except around `in`/`notin`. Parsing it gives back an equal
    /// selector. Page tokens carry this string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    In,
    NotIn,
    Comma,
    Open,
    Close,
    /// `<` or `>`: Kubernetes' numeric comparisons, which Badge does not support.
    Cmp(char),
    End,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Ident(s) => s.clone(),
            Tok::Not => "!".into(),
            Tok::Eq => "=".into(),
            Tok::DoubleEq => "==".into(),
            Tok::NotEq => "!=".into(),
            Tok::In => "in".into(),
            Tok::NotIn => "notin".into(),
            Tok::Comma => ",".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
            Tok::Cmp(c) => c.to_string(),
            Tok::End => "end of string".into(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '!' | '=' | ',' | '(' | ')' | '<' | '>')
}

fn lex(input: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        chars.next();
        let next_is_eq = matches!(chars.peek(), Some((_, '=')));
        let tok = match c {
            '!' if next_is_eq => {
                chars.next();
                Tok::NotEq
            }
            '!' => Tok::Not,
            '=' if next_is_eq => {
                chars.next();
                Tok::DoubleEq
            }
            '=' => Tok::Eq,
            ',' => Tok::Comma,
            '(' => Tok::Open,
            ')' => Tok::Close,
            '<' | '>' => Tok::Cmp(c),
            _ => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, c)) = chars.peek() {
                    if c.is_whitespace() || is_special(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                match &input[start..end] {
                    "in" => Tok::In,
                    "notin" => Tok::NotIn,
                    word => Tok::Ident(word.to_owned()),
                }
            }
        };
        out.push(tok);
    }
    out
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Tok {
        self.tokens.get(self.pos).cloned().unwrap_or(Tok::End)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek();
        self.pos += 1;
        t
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let negated = self.peek() == Tok::Not;
        if negated {
            self.pos += 1;
        }
        let key = match self.next() {
            // As in Kubernetes, `in` and `notin` are keywords where a key is expected
            // (but plain values where a value is).
            Tok::Ident(k) => k,
            t => return Err(format!("found '{}', expected: identifier", t.text())),
        };
        check_key(&key)?;
        if negated {
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
            });
        }
        let op = match self.peek() {
            Tok::End | Tok::Comma => Op::Exists,
            Tok::Eq | Tok::DoubleEq => {
                self.pos += 1;
                Op::Equals(self.exact_value(&key)?)
            }
            Tok::NotEq => {
                self.pos += 1;
                Op::NotEquals(self.exact_value(&key)?)
            }
            Tok::In => {
                self.pos += 1;
                Op::In(self.value_set(&key, "in")?)
            }
            Tok::NotIn => {
                self.pos += 1;
                Op::NotIn(self.value_set(&key, "notin")?)
            }
            t => {
                return Err(format!(
                    "found '{}', expected: =, !=, ==, in, notin",
                    t.text()
                ));
            }
        };
        Ok(Requirement { key, op })
    }

    /// The value after `=`, `==` or `!=`. Nothing (`k=`) means the empty value, as in
    /// Kubernetes.
    fn exact_value(&mut self, key: &str) -> Result<String, String> {
        let value = match self.peek() {
            Tok::End | Tok::Comma => String::new(),
            Tok::Ident(v) => {
                self.pos += 1;
                v
            }
            t @ (Tok::In | Tok::NotIn) => {
                self.pos += 1;
                t.text()
            }
            t => return Err(format!("found '{}', expected: identifier", t.text())),
        };
        check_value(key, &value)?;
        Ok(value)
    }

    /// `( v1, v2, ... )`. An element may be empty (`(a,)` holds "" and "a"), but the
    /// set may not be: `k in ()` is an error.
    fn value_set(&mut self, key: &str, op: &str) -> Result<BTreeSet<String>, String> {
        match self.next() {
            Tok::Open => {}
            t => return Err(format!("found '{}', expected: '('", t.text())),
        }
        let mut set = BTreeSet::new();
        if self.peek() == Tok::Close {
            self.pos += 1;
            return Err(format!(
                "for 'in', 'notin' operators, values set can't be empty (key {} {op})",
                quote(key)
            ));
        }
        let mut current = String::new();
        loop {
            match self.next() {
                Tok::Ident(v) if current.is_empty() => current = v,
                t @ (Tok::In | Tok::NotIn) if current.is_empty() => current = t.text(),
                Tok::Comma => {
                    check_value(key, &current)?;
                    set.insert(std::mem::take(&mut current));
                }
                Tok::Close => {
                    check_value(key, &current)?;
                    set.insert(current);
                    return Ok(set);
                }
                t if current.is_empty() => {
                    return Err(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        t.text()
                    ));
                }
                t => return Err(format!("found '{}', expected: ',' or ')'", t.text())),
            }
        }
    }
}

fn check_key(key: &str) -> Result<(), String> {
    match validate_qualified_name(key).first() {
        None => Ok(()),
        Some(e) => Err(format!("invalid label key {}: {e}", quote(key))),
    }
}

fn check_value(key: &str, value: &str) -> Result<(), String> {
    match validate_label_value(value).first() {
        None => Ok(()),
        Some(e) => Err(format!(
            "invalid label value {} for key {}: {e}",
            quote(value),
            quote(key)
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parse_canonical_form() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("   ", ""),
            ("a=b", "a=b"),
            ("a==b", "a=b"),
            ("a = b", "a=b"),
            ("a!=b", "a!=b"),
            ("a=", "a="),
            ("a!=", "a!="),
            ("a in (x,y)", "a in (x,y)"),
            ("a in (y, x, y)", "a in (x,y)"),
            ("a in(x)", "a in (x)"),
            ("a in (x,)", "a in (,x)"),
            ("a notin (x,y)", "a notin (x,y)"),
            ("a", "a"),
            ("!a", "!a"),
            ("! a", "!a"),
            ("x,a=b", "a=b,x"),
            ("a==b , x", "a=b,x"),
            ("a=b,a=b", "a=b"),
            (
                "example.com/app=web,tier in (front, back)",
                "example.com/app=web,tier in (back,front)",
            ),
            // `in` and `notin` as values.
            ("a=notin", "a=notin"),
            ("a!=in", "a!=in"),
            ("a in (in,notin)", "a in (in,notin)"),
        ];
        for (input, want) in cases {
            let sel = LabelSelector::parse(input)
                .unwrap_or_else(|e| panic!("parse({input:?}) failed: {e}"));
            assert_eq!(&sel.to_string(), want, "parse({input:?})");
            // The canonical form parses back to the same selector.
            let again = LabelSelector::parse(want).unwrap();
            assert_eq!(again, sel, "round trip of {want:?}");
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str)] = &[
            (
                ",",
                "found ',', expected: !, identifier, or 'end of string'",
            ),
            (
                "a,",
                "found 'end of string', expected: identifier after ','",
            ),
            ("a,,b", "found ',', expected: identifier after ','"),
            ("a b", "found 'b', expected: =, !=, ==, in, notin"),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("a=(b)", "found '(', expected: identifier"),
            ("a in b", "found 'b', expected: '('"),
            ("a in ()", "values set can't be empty"),
            ("a in (b", "found 'end of string', expected: ',' or ')'"),
            ("a in (b c)", "found 'c', expected: ',' or ')'"),
            ("a in (=)", "found '=', expected: ',', ')' or identifier"),
            ("a>1", "found '>', expected: =, !=, ==, in, notin"),
            ("!", "found 'end of string', expected: identifier"),
            ("!a=b", "found '=', expected: ',' or 'end of string'"),
            (
                "=b",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            ("-a=b", "invalid label key \"-a\": name part must consist"),
            ("a/b/c", "invalid label key \"a/b/c\": a qualified name"),
            ("a=-b", "invalid label value \"-b\" for key \"a\""),
            ("a in (x,-y)", "invalid label value \"-y\" for key \"a\""),
            ("a=b/c", "invalid label value \"b/c\" for key \"a\""),
        ];
        for (input, want) in cases {
            match LabelSelector::parse(input) {
                Ok(sel) => panic!("parse({input:?}) = {sel}, want error {want:?}"),
                Err(e) => assert!(e.contains(want), "parse({input:?}) = {e:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn parse_field_error() {
        let err = LabelSelector::parse_field("label_selector", "a in ()").unwrap_err();
        let Error::Invalid(v) = err else {
            panic!("want Invalid, got {err:?}")
        };
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "label_selector");
        assert!(
            v[0].description
                .starts_with("invalid label selector \"a in ()\": "),
            "{}",
            v[0].description
        );
        assert!(LabelSelector::parse_field("label_selector", "a=b").is_ok());
    }

    #[test]
    fn matching() {
        let web = labels(&[("app", "web"), ("tier", "front"), ("empty", "")]);
        let none = labels(&[]);
        let cases: &[(&str, bool, bool)] = &[
            // selector, matches `web`, matches `none`
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app=db", false, false),
            ("app!=db", true, true),
            ("app!=web", false, true),
            ("app in (web,db)", true, false),
            ("app in (db)", false, false),
            ("app notin (db)", true, true),
            ("app notin (web)", false, true),
            ("app", true, false),
            ("!app", false, true),
            ("missing", false, false),
            ("!missing", true, true),
            ("empty=", true, false),
            ("empty", true, false),
            ("app=web,tier=front", true, false),
            ("app=web,tier=back", false, false),
            ("app=web,!tier", false, false),
        ];
        for (sel, want_web, want_none) in cases {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&web), *want_web, "{sel:?} vs web");
            assert_eq!(s.matches(&none), *want_none, "{sel:?} vs no labels");
            // HashMap (what prost generates) behaves the same.
            let hm: HashMap<String, String> = web.clone().into_iter().collect();
            assert_eq!(s.matches(&hm), *want_web, "{sel:?} vs web (HashMap)");
            assert_eq!(
                s.matches_with(|k| web.get(k).map(String::as_str)),
                *want_web,
                "{sel:?} vs web (closure)"
            );
        }
    }

    #[test]
    fn everything() {
        let s = LabelSelector::everything();
        assert!(s.is_empty());
        assert_eq!(s, LabelSelector::parse("").unwrap());
        assert!(s.matches(&labels(&[("a", "b")])));
        assert!(!LabelSelector::parse("a").unwrap().is_empty());
    }
}
