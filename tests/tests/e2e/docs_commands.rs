//! The commands in README.md and docs/operations.md are real: every invocation of a
//! Badge binary in a `sh` code block parses with that binary's clap definition, and
//! every gRPC method a grpcurl line calls exists in the protos the servers reflect.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser;
use prost::Message;

const DOCS: [&str; 2] = ["README.md", "docs/operations.md"];

fn read(doc: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(doc))
        .unwrap_or_else(|e| panic!("{doc}: {e}"))
}

/// The shell lines of every ```sh block, continuations joined.
fn sh_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            in_sh = !in_sh && lang.trim() == "sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

/// Shell words: quotes removed, an unquoted `#` starting a word ends the line.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            (None, '#') if word.is_none() => break,
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    out
}

const BINARIES: [&str; 7] = [
    "badge",
    "badgectl",
    "badge-agent",
    "badge-identity",
    "badge-token-issuer",
    "badge-token-review",
    "badge-bench",
];

/// The argv of a Badge binary on this line, if it runs one.
fn badge_argv(words: &[String]) -> Option<Vec<String>> {
    if words.first().map(String::as_str) == Some("cargo") && words.iter().any(|w| w == "run") {
        let bin = words.iter().position(|w| w == "--bin")?;
        let mut argv = vec![words.get(bin + 1)?.clone()];
        if let Some(sep) = words.iter().position(|w| w == "--") {
            argv.extend(words[sep + 1..].iter().cloned());
        }
        return Some(argv);
    }
    // In command position: first, or after `&&`, `;`, `|`.
    let at = (0..words.len()).find(|&i| {
        let w = &words[i];
        let base = w.rsplit('/').next().unwrap_or(w);
        BINARIES.contains(&base)
            && (w == base || w.starts_with("./") || w.starts_with('/'))
            && (i == 0 || matches!(words[i - 1].as_str(), "&&" | ";" | "|"))
    })?;
    let mut argv: Vec<String> = words[at..]
        .iter()
        .take_while(|w| !matches!(w.as_str(), "&&" | "||" | ";" | "|" | "&") && !w.starts_with('#'))
        .cloned()
        .collect();
    argv[0] = argv[0].rsplit('/').next().unwrap_or(&argv[0]).to_string();
    Some(argv)
}

fn parses(argv: &[String]) -> Result<(), String> {
    let r = match argv[0].as_str() {
        "badge" => badge_cli::cli::Cli::try_parse_from(argv).map(drop),
        "badge-identity" => badge_identity::cli::Cli::try_parse_from(argv).map(drop),
        "badge-token-issuer" => badge_token_issuer::cli::Cli::try_parse_from(argv).map(drop),
        "badge-token-review" => badge_token_review::cli::Cli::try_parse_from(argv).map(drop),
        "badge-bench" => badge_bench::cli::Cli::try_parse_from(argv).map(drop),
        "badgectl" => badgectl::Cli::try_parse_from(argv).map(drop),
        "badge-agent" => badge_agent::AgentArgs::try_parse_from(argv).map(drop),
        other => return Err(format!("{other} is not a Badge binary")),
    };
    r.map_err(|e| e.to_string())
}

/// `package.Service/Method` of every method the servers offer (and reflect).
fn methods() -> BTreeSet<String> {
    let mut set = prost_types::FileDescriptorSet::decode(badge_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    // token-review also serves and reflects Envoy's ext_authz Authorization service.
    set.file.extend(
        prost_types::FileDescriptorSet::decode(badge_token_review::ext_authz::FILE_DESCRIPTOR_SET)
            .expect("envoy descriptor set")
            .file,
    );
    let mut out = BTreeSet::new();
    for file in set.file {
        let package = file.package().to_string();
        for service in &file.service {
            for m in &service.method {
                out.insert(format!("{package}.{}/{}", service.name(), m.name()));
            }
        }
    }
    out.insert("grpc.health.v1.Health/Check".into());
    out.insert("grpc.health.v1.Health/Watch".into());
    out
}

#[test]
fn documented_badge_commands_parse() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for doc in DOCS {
        for line in sh_lines(&read(doc)) {
            let Some(argv) = badge_argv(&words(&line)) else {
                continue;
            };
            checked += 1;
            if let Err(e) = parses(&argv) {
                problems.push(format!("{doc}: `{}`:\n{e}", line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(
        checked >= 10,
        "only {checked} commands found: is the scan broken?"
    );
}

#[test]
fn documented_grpc_methods_exist() {
    let known = methods();
    let mut checked = 0;
    let mut problems = Vec::new();
    for doc in DOCS {
        for line in sh_lines(&read(doc)) {
            for w in words(&line) {
                let Some((service, method)) = w.split_once('/') else {
                    continue;
                };
                let is_method = service.contains('.')
                    && service
                        .rsplit('.')
                        .next()
                        .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
                    && method.starts_with(|c: char| c.is_ascii_uppercase())
                    && !service.contains(':');
                if !is_method {
                    continue;
                }
                checked += 1;
                if !known.contains(&w) {
                    problems.push(format!("{doc}: {w} is no gRPC method (`{}`)", line.trim()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        checked >= 10,
        "only {checked} methods found: is the scan broken?"
    );
}

#[test]
fn the_scan_finds_what_it_should() {
    let line = r#"./target/release/badge dev-pki --dir "a b"   # comment"#;
    assert_eq!(
        badge_argv(&words(line)),
        Some(vec![
            "badge".into(),
            "dev-pki".into(),
            "--dir".into(),
            "a b".into()
        ])
    );
    let cargo = words("cargo run --release --bin badge -- up");
    assert_eq!(
        badge_argv(&cargo),
        Some(vec!["badge".to_string(), "up".into()])
    );
    assert_eq!(badge_argv(&words("cp badge-data/kek /x")), None);
    assert_eq!(badge_argv(&words("createdb -U postgres badge")), None);
    assert!(parses(&["badge".into(), "no-such-command".into()]).is_err());
}
