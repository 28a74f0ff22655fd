//! The deployment files agree with the binary they deploy.
//!
//! `docker-compose.yml`, `.env.example` and the `Dockerfile` name the worker's settings, ports
//! and subcommands, and nothing else ties them to the code: there is no Docker engine where the
//! tests run, so a renamed variable would only show up as a worker silently running on its
//! defaults in production. These tests parse the files and check them against what the worker
//! really accepts: the environment variables of every argument in its clap definition
//! (`Cli::command()`, all subcommands), plus the two read outside clap. Nothing here keeps a
//! second list of the names; when a check fails, its message names exactly what is missing.
//!
//! Pure file checks: no services, no network, milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::CommandFactory;
use serde_yaml_ng::Value;

/// Variables the worker reads without clap: tracing's `EnvFilter` and `telemetry::init`.
const READ_OUTSIDE_CLAP: &[&str] = &["RUST_LOG", "LOG_FORMAT"];

/// Worker settings that the compose file leaves to the worker on purpose, and why.
const LEFT_TO_THE_WORKER: &[(&str, &str)] = &[
    (
        "WORKER_REDIS_MASTER_NAME",
        "only behind Sentinel (docs/deployment.md); the compose stack runs one Redis",
    ),
    (
        "WORKER_REDIS_CA_FILE",
        "only with rediss:// (docs/deployment.md, TLS)",
    ),
    (
        "WORKER_REDIS_CERT_FILE",
        "only with a Redis that asks for client certificates",
    ),
    (
        "WORKER_REDIS_KEY_FILE",
        "only with a Redis that asks for client certificates",
    ),
    (
        "WORKER_RABBITMQ_CA_FILE",
        "only with amqps:// (docs/deployment.md, TLS)",
    ),
    (
        "WORKER_RABBITMQ_CERT_FILE",
        "only with a RabbitMQ that asks for client certificates",
    ),
    (
        "WORKER_RABBITMQ_KEY_FILE",
        "only with a RabbitMQ that asks for client certificates",
    ),
    (
        "WORKER_HOSTNAME",
        "the default `celery@<container id>` tells replicas apart (and names each one's remote control queue)",
    ),
    (
        "WORKER_NO_HTTP",
        "the health check and the port mapping need the HTTP server",
    ),
    (
        "WORKER_CONFIG_FILE",
        "compose passes every setting through the environment; a file is an alternative to that",
    ),
    (
        "WORKER_NO_SCHEDULER",
        "every replica runs the scheduler: ticks are claimed per tick in PostgreSQL, so none doubles",
    ),
    (
        "SCHEDULES_FILE",
        "the image sets it; the compose file mounts over that path",
    ),
    (
        "WORKER_DIAGNOSTIC_TASKS",
        "off in production: the diagnostic tasks would run on every queue for anyone who can publish",
    ),
    (
        "WORKER_MIGRATE",
        "compose migrates in its one-shot `migrate` service, which the worker waits for",
    ),
    (
        "WORKER_READY_FILE",
        "compose health-checks /healthz; the ready file is for supervisors and tests",
    ),
];

/// The services the worker's URLs must point at, with the default port of each scheme.
const DEPENDENCIES: &[(&str, &str)] = &[
    ("RABBITMQ_URL", "rabbitmq"),
    ("REDIS_URL", "redis"),
    ("DATABASE_URL", "postgres"),
];

// --- what the worker accepts ---------------------------------------------------------------

struct Worker {
    /// Variable -> its default (list values joined with their delimiter), from clap.
    clap_env: BTreeMap<String, Option<String>>,
    /// Top-level subcommands (`run`, `migrate`, `healthcheck`, ...).
    subcommands: BTreeSet<String>,
    /// The binary's name.
    name: String,
}

impl Worker {
    fn load() -> Self {
        let cmd = worker::cli::Cli::command();
        let mut clap_env = BTreeMap::new();
        // Root first (the global connection settings), then `run` before the others, so that
        // a variable shared by several subcommands takes the service's default.
        collect_env(&cmd, &mut clap_env);
        if let Some(run) = cmd.find_subcommand("run") {
            collect_env_deep(run, &mut clap_env);
        }
        collect_env_deep(&cmd, &mut clap_env);
        Self {
            clap_env,
            subcommands: cmd
                .get_subcommands()
                .map(|s| s.get_name().to_owned())
                .collect(),
            name: cmd.get_name().to_owned(),
        }
    }

    fn knows(&self, var: &str) -> bool {
        self.clap_env.contains_key(var) || READ_OUTSIDE_CLAP.contains(&var)
    }

    fn default(&self, var: &str) -> Option<&str> {
        self.clap_env.get(var).and_then(|d| d.as_deref())
    }
}

fn collect_env(cmd: &clap::Command, out: &mut BTreeMap<String, Option<String>>) {
    for arg in cmd.get_arguments() {
        let Some(name) = arg.get_env() else { continue };
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let delimiter = arg.get_value_delimiter().unwrap_or(',').to_string();
        let default = (!defaults.is_empty()).then(|| defaults.join(&delimiter));
        out.entry(name.to_string_lossy().into_owned())
            .or_insert(default);
    }
}

fn collect_env_deep(cmd: &clap::Command, out: &mut BTreeMap<String, Option<String>>) {
    collect_env(cmd, out);
    for sub in cmd.get_subcommands() {
        collect_env_deep(sub, out);
    }
}

// --- the files -----------------------------------------------------------------------------

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

struct Compose {
    doc: Value,
}

impl Compose {
    fn load() -> Self {
        let doc = serde_yaml_ng::from_str(&repo_file("docker-compose.yml"))
            .unwrap_or_else(|e| panic!("docker-compose.yml is not valid YAML: {e}"));
        Self { doc }
    }

    fn services(&self) -> Vec<(String, &Value)> {
        self.doc
            .get("services")
            .and_then(Value::as_mapping)
            .expect("docker-compose.yml has no `services`")
            .iter()
            .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v))
            .collect()
    }

    fn service(&self, name: &str) -> &Value {
        self.doc
            .get("services")
            .and_then(|s| s.get(name))
            .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
    }

    /// Services run from this repository's image (they have a `build`).
    fn worker_services(&self) -> Vec<(String, &Value)> {
        let ours: Vec<_> = self
            .services()
            .into_iter()
            .filter(|(_, s)| s.get("build").is_some())
            .collect();
        assert!(
            !ours.is_empty(),
            "no service in docker-compose.yml builds the worker image"
        );
        ours
    }

    /// The service whose command is `subcommand` (`run`, `migrate`).
    fn running(&self, subcommand: &str) -> (String, &Value) {
        self.worker_services()
            .into_iter()
            .find(|(_, s)| command(s).first().map(String::as_str) == Some(subcommand))
            .unwrap_or_else(|| {
                panic!("no service in docker-compose.yml runs `worker {subcommand}`")
            })
    }

    /// Every variable the file interpolates (`${VAR}`, `${VAR:-default}`, `$VAR`, ...).
    fn variables(&self) -> BTreeMap<String, Vec<Expansion>> {
        let mut out: BTreeMap<String, Vec<Expansion>> = BTreeMap::new();
        visit_strings(&self.doc, &mut |s| {
            for e in expansions(s) {
                out.entry(e.name.clone()).or_default().push(e);
            }
        });
        out
    }
}

fn visit_strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Sequence(items) => items.iter().for_each(|i| visit_strings(i, f)),
        Value::Mapping(m) => m.iter().for_each(|(k, v)| {
            visit_strings(k, f);
            visit_strings(v, f);
        }),
        Value::Tagged(t) => visit_strings(&t.value, f),
        _ => {}
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A service's `environment`, map or list form; `None` for a bare name (taken from the host).
fn environment(service: &Value) -> BTreeMap<String, Option<String>> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| (scalar(k).expect("variable name"), scalar(v)))
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (item.to_owned(), None),
            })
            .collect(),
        Some(other) => panic!("unexpected environment: {other:?}"),
    }
}

/// `command` / healthcheck `test` as a list of words (a string is split on whitespace).
fn words(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn command(service: &Value) -> Vec<String> {
    words(service.get("command"))
}

/// Container-side ports of `ports` (short or long syntax) and `expose`.
fn container_ports(service: &Value, vars: &Vars) -> Vec<u16> {
    let mut out = Vec::new();
    for key in ["ports", "expose"] {
        let Some(items) = service.get(key).and_then(Value::as_sequence) else {
            continue;
        };
        for item in items {
            let spec = match item {
                Value::Mapping(_) => item.get("target").and_then(scalar),
                _ => scalar(item),
            }
            .expect("port entry");
            let spec = vars.resolve(&spec);
            let container = spec.rsplit(':').next().unwrap_or(&spec);
            let container = container.split('/').next().unwrap_or(container);
            out.push(
                container
                    .parse()
                    .unwrap_or_else(|_| panic!("container port in {spec:?}")),
            );
        }
    }
    out
}

fn depends_on(service: &Value) -> BTreeMap<String, Option<String>> {
    match service.get("depends_on") {
        None => BTreeMap::new(),
        // The list form means `service_started`: no condition.
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|s| (s.to_owned(), None))
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().expect("service name").to_owned(),
                    v.get("condition").and_then(scalar),
                )
            })
            .collect(),
        Some(other) => panic!("unexpected depends_on: {other:?}"),
    }
}

// --- compose interpolation -----------------------------------------------------------------

/// One `${NAME<op><arg>}` or `$NAME` in a compose value.
#[derive(Debug, Clone, PartialEq)]
struct Expansion {
    name: String,
    /// `""`, `":-"`, `"-"`, `":?"`, `"?"`, `":+"`, `"+"`.
    op: String,
    arg: String,
}

impl Expansion {
    fn required(&self) -> bool {
        self.op.contains('?')
    }
}

/// Splits a compose value into literal text and expansions (`$$` is a literal `$`).
fn parse(s: &str) -> Vec<Result<String, Expansion>> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            literal.push(chars[i]);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                literal.push('$');
                i += 2;
            }
            Some('{') => {
                let start = i + 2;
                let mut j = start;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[start..j].iter().collect();
                let mut op = String::new();
                if chars.get(j) == Some(&':') {
                    op.push(':');
                    j += 1;
                }
                if let Some(c @ ('-' | '?' | '+')) = chars.get(j) {
                    op.push(*c);
                    j += 1;
                }
                let mut depth = 1;
                let arg_start = j;
                while j < chars.len() {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                assert!(j < chars.len(), "unclosed ${{ in {s:?}");
                let arg: String = chars[arg_start..j].iter().collect();
                out.push(Ok(std::mem::take(&mut literal)));
                out.push(Err(Expansion { name, op, arg }));
                i = j + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                out.push(Ok(std::mem::take(&mut literal)));
                out.push(Err(Expansion {
                    name: chars[start..j].iter().collect(),
                    op: String::new(),
                    arg: String::new(),
                }));
                i = j;
            }
            _ => {
                literal.push('$');
                i += 1;
            }
        }
    }
    out.push(Ok(literal));
    out.retain(|p| p.as_ref().map_or(true, |l| !l.is_empty()));
    out
}

/// The expansion `s` consists of, if it is nothing else (`${VAR:-default}`).
fn sole_expansion(s: &str) -> Option<Expansion> {
    match parse(s).as_slice() {
        [Err(e)] => Some(e.clone()),
        _ => None,
    }
}

/// Every expansion in `s`, including those nested in defaults.
fn expansions(s: &str) -> Vec<Expansion> {
    let mut out = Vec::new();
    for part in parse(s) {
        if let Err(e) = part {
            out.extend(expansions(&e.arg));
            out.push(e);
        }
    }
    out
}

/// The values compose would interpolate with: `.env.example`, with the secrets it leaves
/// empty on purpose filled in (compose would refuse to start without them).
struct Vars(BTreeMap<String, String>);

impl Vars {
    fn example() -> Self {
        let mut vars = env_example();
        for (name, uses) in Compose::load().variables() {
            let value = vars.entry(name.clone()).or_default();
            if value.is_empty() && uses.iter().any(Expansion::required) {
                *value = format!("example{}", name.to_lowercase().replace('_', ""));
            }
        }
        Self(vars)
    }

    fn resolve(&self, s: &str) -> String {
        parse(s)
            .into_iter()
            .map(|part| match part {
                Ok(literal) => literal,
                Err(e) => {
                    let value = self.0.get(&e.name);
                    let set_non_empty = value.filter(|v| !v.is_empty());
                    match e.op.as_str() {
                        "" => value.cloned().unwrap_or_default(),
                        ":-" => set_non_empty
                            .cloned()
                            .unwrap_or_else(|| self.resolve(&e.arg)),
                        "-" => value.cloned().unwrap_or_else(|| self.resolve(&e.arg)),
                        ":?" | "?" => set_non_empty.cloned().unwrap_or_else(|| {
                            panic!("compose would refuse to start: {} is unset", e.name)
                        }),
                        ":+" => set_non_empty
                            .map(|_| self.resolve(&e.arg))
                            .unwrap_or_default(),
                        "+" => value.map(|_| self.resolve(&e.arg)).unwrap_or_default(),
                        op => panic!("unknown interpolation operator {op:?}"),
                    }
                }
            })
            .collect()
    }
}

/// `.env.example`'s assignments (comments and blank lines skipped).
fn env_example() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (n, line) in repo_file(".env.example").lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!(".env.example line {}: not NAME=value: {line:?}", n + 1));
        let previous = out.insert(name.trim().to_owned(), value.trim().to_owned());
        assert!(
            previous.is_none(),
            ".env.example sets {name} twice (line {})",
            n + 1
        );
    }
    out
}

// --- URLs, addresses, durations, numbers ---------------------------------------------------

#[derive(Debug)]
struct Url {
    password: Option<String>,
    host: String,
    port: u16,
}

fn parse_url(url: &str) -> Url {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("not a URL: {url:?}"));
    let authority = rest.split('/').next().unwrap_or(rest);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let password = userinfo
        .and_then(|u| u.split_once(':'))
        .map(|(_, p)| p.to_owned());
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse().unwrap_or_else(|_| panic!("port of {url:?}")),
        ),
        None => {
            let port = match scheme.split('+').next().unwrap_or(scheme) {
                "amqp" => 5672,
                "amqps" => 5671,
                "redis" | "rediss" => 6379,
                "postgres" | "postgresql" => 5432,
                other => panic!("no default port known for scheme {other:?}"),
            };
            (hostport.to_owned(), port)
        }
    };
    Url {
        password,
        host,
        port,
    }
}

fn addr_port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not host:port: {addr:?}"))
}

/// Compose durations: `45s`, `1m30s`, `2m`, `1h`, `500ms`.
fn duration_secs(s: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&next) = chars.peek() {
            if next.is_ascii_alphabetic() {
                unit.push(next);
                chars.next();
            } else {
                break;
            }
        }
        let n: f64 = number.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
        total += n * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            other => panic!("unknown unit {other:?} in duration {s:?}"),
        };
        number.clear();
    }
    assert!(number.is_empty(), "duration {s:?} has no unit");
    total
}

/// Equal as values: `5` and `5.0` are the same number.
fn same_value(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

// --- Dockerfile ----------------------------------------------------------------------------

struct Instruction {
    keyword: String,
    args: String,
}

struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn load() -> Self {
        let text = repo_file("Dockerfile");
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(head) => current.push_str(head),
                None => {
                    current.push_str(line);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        let mut global_args = BTreeMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        for line in logical {
            let (keyword, args) = line
                .trim()
                .split_once(char::is_whitespace)
                .unwrap_or((&line, ""));
            let keyword = keyword.to_uppercase();
            let args = args.trim().to_owned();
            if keyword == "ARG" && stages.is_empty() {
                if let Some((k, v)) = args.split_once('=') {
                    global_args.insert(k.to_owned(), v.to_owned());
                }
                continue;
            }
            if keyword == "FROM" {
                let words: Vec<&str> = args.split_whitespace().collect();
                let image = words
                    .iter()
                    .find(|w| !w.starts_with("--"))
                    .expect("FROM image");
                let image = global_args.iter().fold(image.to_string(), |acc, (k, v)| {
                    acc.replace(&format!("${{{k}}}"), v)
                        .replace(&format!("${k}"), v)
                });
                let name = words
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("as"))
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string());
                stages.push(Stage {
                    from: image,
                    name,
                    instructions: Vec::new(),
                });
                continue;
            }
            stages
                .last_mut()
                .expect("instruction before FROM")
                .instructions
                .push(Instruction { keyword, args });
        }
        assert!(!stages.is_empty(), "Dockerfile has no FROM");
        Self { stages }
    }

    fn runtime(&self) -> &Stage {
        self.stages.last().expect("a stage")
    }

    /// The stage the runtime copies the binary from.
    fn builder(&self) -> &Stage {
        let from = self
            .runtime()
            .all("COPY")
            .into_iter()
            .find_map(|args| {
                args.split_whitespace()
                    .find_map(|w| w.strip_prefix("--from="))
                    .map(str::to_owned)
            })
            .expect("the runtime stage copies the binary --from a build stage");
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(from.as_str()))
            .unwrap_or_else(|| panic!("no stage named {from}"))
    }
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    }

    fn last(&self, keyword: &str) -> Option<&str> {
        self.all(keyword).into_iter().last()
    }

    /// `ENV A=1 B=2` and `ENV A 1`.
    fn env(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for args in self.all("ENV") {
            if args.contains('=') {
                for word in args.split_whitespace() {
                    let (k, v) = word.split_once('=').expect("ENV NAME=value");
                    out.insert(k.to_owned(), v.trim_matches('"').to_owned());
                }
            } else if let Some((k, v)) = args.split_once(char::is_whitespace) {
                out.insert(k.to_owned(), v.trim().to_owned());
            }
        }
        out
    }
}

/// `["worker", "run"]` (exec form) as words.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not the exec (JSON) form: {args:?}: {e}"))
}

// --- the checks ----------------------------------------------------------------------------

#[test]
fn compose_and_image_pass_only_variables_the_worker_reads() {
    let worker = Worker::load();
    let compose = Compose::load();
    let mut unknown = Vec::new();
    for (name, service) in compose.worker_services() {
        for var in environment(service).keys() {
            if !worker.knows(var) {
                unknown.push(format!("{var} (docker-compose.yml, service `{name}`)"));
            }
        }
    }
    for var in Dockerfile::load().runtime().env().keys() {
        if !worker.knows(var) {
            unknown.push(format!("{var} (Dockerfile ENV)"));
        }
    }
    assert!(
        unknown.is_empty(),
        "variables the worker does not read (in no clap `env` of `worker` or its subcommands, \
         nor in {READ_OUTSIDE_CLAP:?}): a typo here, or a setting the worker lacks:\n  {}\n\
         the worker reads: {:?}",
        unknown.join("\n  "),
        worker.clap_env.keys().collect::<Vec<_>>(),
    );
}

#[test]
fn compose_sets_every_worker_setting() {
    let worker = Worker::load();
    let compose = Compose::load();
    let (_, service) = compose.running("run");
    let set = environment(service);
    let left: BTreeSet<&str> = LEFT_TO_THE_WORKER.iter().map(|(v, _)| *v).collect();
    let missing: Vec<&String> = worker
        .clap_env
        .keys()
        .filter(|v| !set.contains_key(*v) && !left.contains(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the worker reads these variables but docker-compose.yml does not pass them to \
         `worker run` (add them, and to .env.example, or to LEFT_TO_THE_WORKER with a reason): \
         {missing:?}"
    );
    let stale: Vec<&str> = left
        .iter()
        .copied()
        .filter(|v| !worker.clap_env.contains_key(*v))
        .collect();
    assert!(
        stale.is_empty(),
        "LEFT_TO_THE_WORKER names variables the worker's clap definition does not have: {stale:?}"
    );
}

#[test]
fn compose_defaults_are_the_worker_defaults() {
    let worker = Worker::load();
    let compose = Compose::load();
    let example = env_example();
    let mut wrong = Vec::new();
    for (name, service) in compose.worker_services() {
        for (var, value) in environment(service) {
            let Some(value) = value else { continue };
            // Only plain pass-throughs, `VAR: ${VAR:-default}`.
            let Some(e) = sole_expansion(&value) else {
                continue;
            };
            if e.name != var || !matches!(e.op.as_str(), ":-" | "-") {
                continue;
            }
            if let Some(default) = worker.default(&var)
                && !same_value(&e.arg, default)
            {
                wrong.push(format!(
                    "{name}: {var} defaults to {:?} in docker-compose.yml, {default:?} in the worker",
                    e.arg
                ));
            }
            if let Some(example) = example.get(&var)
                && !same_value(example, &e.arg)
            {
                wrong.push(format!(
                    "{name}: {var} is {example:?} in .env.example, {:?} by default in docker-compose.yml",
                    e.arg
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "defaults disagree:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn ports_match_the_worker_settings() {
    let worker = Worker::load();
    let compose = Compose::load();
    let vars = Vars::example();
    let (worker_name, service) = compose.running("run");
    let env = environment(service);

    for (var, dependency) in DEPENDENCIES {
        let default = worker
            .default(var)
            .unwrap_or_else(|| panic!("the worker has no default for {var}"));
        let default_port = parse_url(default).port;
        let raw = env
            .get(*var)
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("`{worker_name}` gets no {var}"));
        let url = parse_url(&vars.resolve(&raw));
        assert_eq!(
            url.host, *dependency,
            "{var} must point at the `{dependency}` service"
        );
        assert_eq!(
            url.port, default_port,
            "{var}: port {} in docker-compose.yml, {default_port} in the worker's default",
            url.port
        );
        let ports = container_ports(compose.service(dependency), &vars);
        assert!(
            ports.contains(&url.port),
            "`{dependency}` publishes {ports:?}, not the port {var} uses ({})",
            url.port
        );
    }

    // The migration talks to the same database.
    let (migrate_name, migrate) = compose.running("migrate");
    assert_eq!(
        environment(migrate).get("DATABASE_URL"),
        env.get("DATABASE_URL"),
        "`{migrate_name}` and `{worker_name}` must use the same DATABASE_URL"
    );

    // The worker's own HTTP port: its default, the compose setting, the mapping, the image.
    let default_port = addr_port(
        worker
            .default("WORKER_HTTP_ADDR")
            .expect("the worker has a default WORKER_HTTP_ADDR"),
    );
    let http_addr = env
        .get("WORKER_HTTP_ADDR")
        .cloned()
        .flatten()
        .map_or_else(|| default_port, |a| addr_port(&vars.resolve(&a)));
    assert_eq!(
        http_addr, default_port,
        "WORKER_HTTP_ADDR's port in docker-compose.yml differs from the worker's default"
    );
    let ports = container_ports(service, &vars);
    assert!(
        ports.contains(&http_addr),
        "`{worker_name}` maps {ports:?}, not its HTTP port {http_addr}"
    );
    let image = Dockerfile::load();
    let exposed: Vec<u16> = image
        .runtime()
        .all("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| {
            p.split('/')
                .next()
                .unwrap_or(p)
                .parse()
                .expect("EXPOSE port")
        })
        .collect();
    assert!(
        exposed.contains(&http_addr),
        "the Dockerfile EXPOSEs {exposed:?}, not the HTTP port {http_addr}"
    );
    if let Some(addr) = image.runtime().env().get("WORKER_HTTP_ADDR") {
        assert_eq!(
            addr_port(addr),
            http_addr,
            "the Dockerfile's WORKER_HTTP_ADDR"
        );
    }
}

#[test]
fn redis_runs_with_the_production_flags_and_the_worker_has_its_password() {
    let compose = Compose::load();
    let redis = compose.service("redis");
    let words = command(redis);
    let flag = |name: &str| -> String {
        let i = words
            .iter()
            .position(|w| w == name)
            .unwrap_or_else(|| panic!("redis-server runs without {name}: {words:?}"));
        words
            .get(i + 1)
            .cloned()
            .unwrap_or_else(|| panic!("{name} has no value"))
    };
    assert_eq!(flag("--maxmemory"), "512mb");
    assert_eq!(flag("--maxmemory-policy"), "allkeys-lru");
    assert!(
        matches!(flag("--appendonly").as_str(), "yes" | "true"),
        "AOF must be on"
    );

    // requirepass comes from the environment, never a literal in the file.
    let requirepass = flag("--requirepass");
    let Some(password) = sole_expansion(&requirepass) else {
        panic!("--requirepass must be exactly one ${{VARIABLE}}, got {requirepass:?}");
    };
    assert!(
        password.required(),
        "--requirepass ${{{}}} must be required (`:?`): an empty value would start Redis without a password",
        password.name
    );

    let (worker_name, service) = compose.running("run");
    let redis_url = environment(service)
        .get("REDIS_URL")
        .cloned()
        .flatten()
        .expect("the worker gets REDIS_URL");
    let url_password = parse_url(&redis_url)
        .password
        .unwrap_or_else(|| panic!("`{worker_name}`'s REDIS_URL has no password: {redis_url}"));
    assert!(
        expansions(&url_password)
            .iter()
            .any(|e| e.name == password.name),
        "`{worker_name}`'s REDIS_URL password is {url_password:?}, not ${{{}}}",
        password.name
    );

    // The health check must authenticate, or it reads NOAUTH as an answer.
    let test = words_of_healthcheck(redis).join(" ");
    let authenticated = environment(redis)
        .get("REDISCLI_AUTH")
        .cloned()
        .flatten()
        .is_some_and(|v| expansions(&v).iter().any(|e| e.name == password.name))
        || test.contains(&password.name);
    assert!(
        authenticated,
        "redis's health check does not authenticate: {test}"
    );
}

fn words_of_healthcheck(service: &Value) -> Vec<String> {
    words(service.get("healthcheck").and_then(|h| h.get("test")))
}

#[test]
fn start_up_waits_for_healthy_services_and_the_migration() {
    let compose = Compose::load();
    let (worker_name, worker_service) = compose.running("run");
    let (migrate_name, migrate) = compose.running("migrate");

    // Every wait has a condition; the list form would only wait for "started".
    for (name, service) in compose.services() {
        for (dep, condition) in depends_on(service) {
            let condition = condition.unwrap_or_else(|| {
                panic!(
                    "`{name}` depends on `{dep}` without a condition (it would not wait for health)"
                )
            });
            assert!(
                matches!(
                    condition.as_str(),
                    "service_healthy" | "service_completed_successfully"
                ),
                "`{name}` waits for `{dep}` with {condition}"
            );
            if condition == "service_healthy" {
                let target = compose.service(&dep);
                let check = target.get("healthcheck");
                let disabled = check
                    .and_then(|h| h.get("disable"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                assert!(
                    check.is_some() && !disabled && !words_of_healthcheck(target).is_empty(),
                    "`{name}` waits for `{dep}` to be healthy, but `{dep}` has no health check"
                );
            }
        }
    }

    let waits = depends_on(worker_service);
    for (_, dependency) in DEPENDENCIES {
        assert_eq!(
            waits.get(*dependency).cloned().flatten().as_deref(),
            Some("service_healthy"),
            "`{worker_name}` must wait for `{dependency}` to be healthy"
        );
    }
    assert_eq!(
        waits.get(&migrate_name).cloned().flatten().as_deref(),
        Some("service_completed_successfully"),
        "`{worker_name}` must wait for `{migrate_name}` to finish"
    );
    assert_eq!(
        depends_on(migrate)
            .get("postgres")
            .cloned()
            .flatten()
            .as_deref(),
        Some("service_healthy"),
        "`{migrate_name}` must wait for PostgreSQL to be healthy"
    );
    // A one-shot that restarts never "completes successfully" for long.
    let restart = migrate.get("restart").and_then(scalar);
    assert!(
        matches!(restart.as_deref(), None | Some("no") | Some("on-failure")),
        "`{migrate_name}` restarts with {restart:?}"
    );
}

#[test]
fn commands_are_worker_subcommands() {
    let worker = Worker::load();
    let compose = Compose::load();
    let known = |sub: &str| worker.subcommands.contains(sub);
    let mut missing = Vec::new();
    for (name, service) in compose.worker_services() {
        let cmd = command(service);
        let sub = cmd
            .first()
            .unwrap_or_else(|| panic!("`{name}` has no command"));
        if !known(sub) {
            missing.push(format!("{sub} (docker-compose.yml, service `{name}`)"));
        }
        let test = words_of_healthcheck(service);
        if let Some(i) = test.iter().position(|w| *w == worker.name)
            && let Some(sub) = test.get(i + 1)
            && !known(sub)
        {
            missing.push(format!("{sub} (health check of `{name}`)"));
        }
    }
    let image = Dockerfile::load();
    let runtime = image.runtime();
    let entrypoint = exec_form(runtime.last("ENTRYPOINT").expect("ENTRYPOINT"));
    assert_eq!(
        entrypoint,
        std::slice::from_ref(&worker.name),
        "ENTRYPOINT must be the binary"
    );
    let cmd = exec_form(runtime.last("CMD").expect("CMD"));
    assert_eq!(cmd, ["run"], "CMD");
    let healthcheck = runtime.last("HEALTHCHECK").expect("HEALTHCHECK");
    let (_, probe) = healthcheck
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD [...]");
    let probe = exec_form(probe.trim());
    assert_eq!(
        probe.first(),
        Some(&worker.name),
        "HEALTHCHECK runs the binary"
    );
    for sub in cmd.iter().chain(probe.get(1)) {
        if !known(sub) {
            missing.push(format!("{sub} (Dockerfile)"));
        }
    }
    assert!(
        missing.is_empty(),
        "subcommands the worker does not have: {missing:?}; it has {:?}",
        worker.subcommands
    );
}

#[test]
fn every_compose_variable_is_in_env_example() {
    let compose = Compose::load();
    let used = compose.variables();
    let example = env_example();
    let absent: Vec<&String> = used.keys().filter(|v| !example.contains_key(*v)).collect();
    assert!(
        absent.is_empty(),
        "docker-compose.yml uses variables .env.example does not set: {absent:?}"
    );
    let unused: Vec<&String> = example.keys().filter(|v| !used.contains_key(*v)).collect();
    assert!(
        unused.is_empty(),
        ".env.example sets variables docker-compose.yml never uses (they would do nothing): {unused:?}"
    );
    // Secrets: required by the file, and shipped empty.
    let shipped: Vec<String> = example
        .iter()
        .filter(|(name, value)| {
            (name.contains("PASSWORD") || name.contains("TOKEN") || name.contains("SECRET"))
                && !value.is_empty()
        })
        .map(|(name, _)| name.clone())
        .collect();
    assert!(
        shipped.is_empty(),
        ".env.example ships values for secrets: {shipped:?}"
    );
    for name in used.keys().filter(|n| n.contains("PASSWORD")) {
        assert!(
            used[name].iter().all(Expansion::required),
            "{name} is used without `:?` somewhere: compose would start with an empty password"
        );
    }
}

#[test]
fn worker_outlives_its_shutdown_grace() {
    let worker = Worker::load();
    let compose = Compose::load();
    let vars = Vars::example();
    let (name, service) = compose.running("run");
    let grace = environment(service)
        .get("WORKER_SHUTDOWN_GRACE")
        .cloned()
        .flatten()
        .map(|v| vars.resolve(&v))
        .or_else(|| worker.default("WORKER_SHUTDOWN_GRACE").map(str::to_owned))
        .expect("WORKER_SHUTDOWN_GRACE: no value and no default");
    let grace: f64 = grace.parse().expect("WORKER_SHUTDOWN_GRACE in seconds");
    let stop = service
        .get("stop_grace_period")
        .and_then(scalar)
        .map(|v| duration_secs(&vars.resolve(&v)))
        .unwrap_or(10.0);
    assert!(
        stop > grace,
        "`{name}`: Docker kills it {stop} s after SIGTERM, before its {grace} s shutdown grace ends"
    );
}

#[test]
fn dockerfile_builds_as_documented() {
    let image = Dockerfile::load();
    let builder = image.builder();
    let runtime = image.runtime();

    // The toolchain in the builder can build the workspace.
    let tag = builder
        .from
        .split_once(':')
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("builder image without a tag: {}", builder.from));
    let version = |s: &str| -> Vec<u32> {
        s.split(['-', '.'])
            .map_while(|p| p.parse().ok())
            .take(2)
            .collect()
    };
    let manifest: toml::Table = repo_file("Cargo.toml").parse().expect("Cargo.toml parses");
    let msrv = manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("rust-version"))
        .and_then(toml::Value::as_str)
        .expect("workspace.package.rust-version");
    assert!(
        version(tag) >= version(msrv),
        "builder {} is older than the workspace's rust-version {msrv}",
        builder.from
    );
    assert!(
        builder.from.starts_with("rust:"),
        "builder: {}",
        builder.from
    );

    // aws-lc-sys (lapin's rustls) needs a C compiler, and cmake as its fallback.
    let runs = builder.all("RUN").join("\n");
    assert!(
        runs.contains("cmake") && (runs.contains("gcc") || runs.contains("clang")),
        "the builder installs no cmake / C compiler"
    );
    assert!(
        runs.matches("cargo build --release --locked -p worker")
            .count()
            >= 2,
        "dependencies are not built in their own layer before the sources are copied"
    );

    assert!(
        runtime.from.contains("slim"),
        "runtime image: {}",
        runtime.from
    );
    let runtime_runs = runtime.all("RUN").join("\n");
    assert!(
        runtime_runs.contains("ca-certificates") && runtime_runs.contains("tzdata"),
        "the runtime lacks ca-certificates or tzdata"
    );
    let user = runtime.last("USER").expect("USER");
    let uid = user.split(':').next().unwrap_or(user);
    assert!(uid != "root" && uid != "0", "the runtime runs as root");

    // The shipped schedules land where SCHEDULES_FILE says.
    let schedules = runtime
        .env()
        .get("SCHEDULES_FILE")
        .cloned()
        .expect("ENV SCHEDULES_FILE");
    assert!(
        runtime.all("COPY").iter().any(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            words.first() == Some(&"schedules.toml") && words.last() == Some(&schedules.as_str())
        }),
        "no `COPY schedules.toml {schedules}`"
    );
}
