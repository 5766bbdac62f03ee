//! The approval broker: every permission request of every agent becomes one Village approval.
//!
//! [`classify`] turns what an agent wants to do into an action class with the rules of
//! [`SHELL_RULES`] and [`SECRET_PATHS`] (tests read the same tables); [`SessionBroker`] asks the
//! server, blocks the agent until the decision (or the expiry's deny) arrives, and remembers
//! `scope: session` allows so the same kind of request does not reach a human twice.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::agents::{Decision, ToolKind};

/// Shell command rules, first match wins: a command belongs to a class when one of its
/// commands (split at `;`, `&&`, `||`, `|`, after `sudo` and `VAR=value` prefixes) starts with
/// one of the word sequences.
pub const SHELL_RULES: &[(&str, &[&str])] = &[
    (
        "merge",
        &[
            "git push",
            "git merge",
            "gh pr merge",
            "glab mr merge",
            "hub merge",
            "git rebase",
        ],
    ),
    (
        "deploy",
        &[
            "kubectl apply",
            "kubectl rollout",
            "kubectl set image",
            "helm install",
            "helm upgrade",
            "terraform apply",
            "tofu apply",
            "pulumi up",
            "fly deploy",
            "flyctl deploy",
            "vercel",
            "netlify deploy",
            "heroku",
            "serverless deploy",
            "sls deploy",
            "cdk deploy",
            "wrangler deploy",
            "wrangler publish",
            "gcloud app deploy",
            "gcloud run deploy",
            "aws cloudformation deploy",
            "docker push",
            "ansible-playbook",
            "cap deploy",
        ],
    ),
    (
        "secrets",
        &[
            "printenv",
            "vault",
            "aws secretsmanager",
            "gcloud secrets",
            "kubectl get secret",
            "kubectl get secrets",
            "gh secret",
            "op read",
        ],
    ),
    (
        "deps_add",
        &[
            "npm install",
            "npm i",
            "npm add",
            "yarn add",
            "pnpm add",
            "pnpm install",
            "bun add",
            "pip install",
            "pip3 install",
            "python -m pip install",
            "python3 -m pip install",
            "uv add",
            "uv pip install",
            "poetry add",
            "cargo add",
            "cargo install",
            "go get",
            "go install",
            "gem install",
            "bundle add",
            "composer require",
            "apt install",
            "apt-get install",
            "brew install",
            "dotnet add package",
        ],
    ),
    (
        "network",
        &[
            "curl", "wget", "http", "ssh", "scp", "rsync", "nc", "telnet", "ftp",
        ],
    ),
];

/// Paths (any component, or a file name suffix) that hold secrets or credentials.
pub const SECRET_PATHS: &[&str] = &[
    ".env",
    ".ssh",
    ".aws",
    ".gnupg",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".docker/config.json",
    "credentials",
    "secrets",
    "id_rsa",
    "id_ed25519",
    ".pem",
    ".key",
    ".p12",
];

/// The action class of a request.
pub fn classify(kind: &ToolKind) -> &'static str {
    match kind {
        ToolKind::Shell(command) => classify_command(command),
        ToolKind::FileEdit(paths) => {
            if paths.iter().any(|p| is_secret_path(p)) {
                "secrets"
            } else {
                "file_change"
            }
        }
        ToolKind::FileRead(path) => {
            if is_secret_path(path) {
                "secrets"
            } else {
                "other"
            }
        }
        ToolKind::Fetch(_) => "network",
        ToolKind::Other => "other",
    }
}

fn classify_command(command: &str) -> &'static str {
    let lower = unwrap_shell(&command.to_lowercase());
    let commands = split_commands(&lower);
    for (class, prefixes) in SHELL_RULES {
        for words in &commands {
            if prefixes.iter().any(|p| starts_with_words(words, p)) {
                return class;
            }
        }
    }
    // A command that reads a secret file is about secrets whatever the program.
    if commands
        .iter()
        .flatten()
        .any(|w| is_secret_path(w.trim_matches(|c| c == '"' || c == '\'')))
    {
        return "secrets";
    }
    "command"
}

/// `bash -lc 'git push'` (how Codex reports the commands it runs) is `git push`: the script a
/// shell is given is what it runs.
fn unwrap_shell(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let is_shell = words.first().is_some_and(|w| {
        matches!(
            w.rsplit('/').next().unwrap_or(w),
            "bash" | "sh" | "zsh" | "dash"
        )
    });
    let script_flag = words
        .get(1)
        .is_some_and(|f| f.starts_with('-') && f.ends_with('c'));
    if !(is_shell && script_flag) {
        return line.to_string();
    }
    let Some(at) = line.find(words[1]).map(|i| i + words[1].len()) else {
        return line.to_string();
    };
    let script = line[at..].trim();
    let unquoted = script
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| script.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .unwrap_or(script);
    unquoted.to_string()
}

/// The commands of a command line, each as its words, without `sudo` and `VAR=value` prefixes.
fn split_commands(line: &str) -> Vec<Vec<&str>> {
    line.split(['\n', ';', '|', '&', '(', ')', '`'])
        .map(|part| {
            part.split_whitespace()
                .skip_while(|w| {
                    *w == "sudo" || *w == "exec" || (w.contains('=') && !w.starts_with('-'))
                })
                .collect::<Vec<_>>()
        })
        .filter(|words| !words.is_empty())
        .collect()
}

fn starts_with_words(words: &[&str], prefix: &str) -> bool {
    let want: Vec<&str> = prefix.split_whitespace().collect();
    words.len() >= want.len()
        && want.iter().zip(words).all(|(w, have)| {
            // `/usr/bin/git` is `git`.
            let have = have.rsplit('/').next().unwrap_or(have);
            *w == have
        })
}

fn is_secret_path(path: &str) -> bool {
    let lower = path.to_lowercase();
    SECRET_PATHS.iter().any(|s| {
        if s.starts_with('.') && !s.contains('/') && s.len() <= 4 && *s != ".env" {
            // File name suffixes such as `.pem`, `.key`.
            lower.ends_with(s)
        } else {
            lower
                .split('/')
                .any(|c| c == *s || (*s == ".env" && c.starts_with(".env")))
                || (s.contains('/') && lower.contains(s))
                || (!s.starts_with('.') && lower.rsplit('/').next().is_some_and(|n| n.contains(s)))
        }
    })
}

/// One approval as the runner asks for it.
#[derive(Clone, Debug)]
pub struct Ask {
    pub action: String,
    pub tool: String,
    pub description: String,
    pub context: Value,
}

impl Ask {
    /// An agent's request: classified, with the tool and its input in `context`.
    pub fn from_agent(
        protocol: &str,
        tool: &str,
        kind: &ToolKind,
        input: Value,
        description: &str,
        options: Option<Value>,
    ) -> Self {
        let mut agent = json!({"protocol": protocol});
        if let Some(o) = options {
            agent["options"] = o;
        }
        Self {
            action: classify(kind).to_string(),
            tool: tool.to_string(),
            description: description.chars().take(500).collect(),
            context: json!({"tool": tool, "input": input, "agent": agent}),
        }
    }
}

/// One session's approvals: what is allowed for the session, and who waits for which approval.
#[derive(Default)]
pub struct SessionBroker {
    allowed: HashSet<(String, String)>,
    /// Asks waiting for each approval. The server answers a request identical to one still
    /// pending with that approval, so two asks (a resend, or an agent asking twice at once) may
    /// wait for one decision.
    waiting: HashMap<String, Vec<(Ask, oneshot::Sender<Decision>)>>,
    /// Decisions known here, by approval id: one that arrives before its approval's id is known
    /// waits here for its ask, and a later ask the server answered with the same approval gets
    /// it at once.
    decided: HashMap<String, Decision>,
}

impl SessionBroker {
    /// Whether an earlier `scope: session` allow covers this request.
    pub fn allowed_for_session(&self, ask: &Ask) -> bool {
        self.allowed
            .contains(&(ask.action.clone(), ask.tool.clone()))
    }

    /// The server created (or gave back) approval `id` for `ask`; `reply` gets the decision. A
    /// decision that came first is returned if it reached someone still waiting for it.
    pub fn waiting(
        &mut self,
        id: String,
        ask: Ask,
        reply: oneshot::Sender<Decision>,
    ) -> Option<Decision> {
        if let Some(d) = self.decided.get(&id).cloned() {
            self.remember(&ask, &d);
            reply.send(d.clone()).ok().map(|()| d)
        } else {
            self.waiting.entry(id).or_default().push((ask, reply));
            None
        }
    }

    /// `approval_resolved` for approval `id`: the decision, if it reached someone still waiting
    /// for it. The same command again (resent after a reconnect) changes nothing.
    pub fn resolved(&mut self, id: &str, decision: Decision) -> Option<Decision> {
        if self.decided.contains_key(id) {
            return None;
        }
        self.decided.insert(id.to_string(), decision.clone());
        let mut reached = false;
        for (ask, reply) in self.waiting.remove(id).unwrap_or_default() {
            self.remember(&ask, &decision);
            reached |= reply.send(decision.clone()).is_ok();
        }
        reached.then_some(decision)
    }

    fn remember(&mut self, ask: &Ask, d: &Decision) {
        if d.allow && d.for_session {
            self.allowed.insert((ask.action.clone(), ask.tool.clone()));
        }
    }

    /// Pending approvals, as the session ends: each waiter hears a deny.
    pub fn close(&mut self) {
        for (_, reply) in self.waiting.drain().flat_map(|(_, asks)| asks) {
            let _ = reply.send(Decision::deny("the session ended"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (what the agent asks, the class the broker gives it)
    const EXAMPLES: &[(&str, &str)] = &[
        ("git push origin main", "merge"),
        ("/bin/bash -lc 'git push origin main'", "merge"),
        ("sh -c \"npm install left-pad\"", "deps_add"),
        ("/bin/bash -lc 'ls -la'", "command"),
        ("cd repo && git push", "merge"),
        ("gh pr merge 12 --squash", "merge"),
        ("git merge feature", "merge"),
        ("GIT_SSH_COMMAND=x /usr/bin/git push", "merge"),
        ("kubectl apply -f deploy.yaml", "deploy"),
        ("terraform apply -auto-approve", "deploy"),
        ("npm install left-pad", "deps_add"),
        ("sudo apt-get install -y jq", "deps_add"),
        ("pip install requests", "deps_add"),
        ("cargo add serde", "deps_add"),
        ("cat .env", "secrets"),
        ("printenv", "secrets"),
        ("cat ~/.aws/credentials", "secrets"),
        ("curl https://example.com", "network"),
        ("ls -la", "command"),
        ("cargo test", "command"),
        ("git status && git diff", "command"),
        ("npm test", "command"),
    ];

    #[test]
    fn shell_commands_fall_in_their_classes() {
        for (command, class) in EXAMPLES {
            assert_eq!(
                classify(&ToolKind::Shell(command.to_string())),
                *class,
                "{command}"
            );
        }
        // Every class in the table has an example.
        for (class, _) in SHELL_RULES {
            assert!(EXAMPLES.iter().any(|(_, c)| c == class), "{class}");
        }
    }

    #[test]
    fn files_fetches_and_the_rest() {
        let edit = |p: &str| ToolKind::FileEdit(vec![p.to_string()]);
        assert_eq!(classify(&edit("src/main.rs")), "file_change");
        assert_eq!(classify(&edit(".env")), "secrets");
        assert_eq!(classify(&edit("config/.env.production")), "secrets");
        assert_eq!(classify(&edit("deploy/server.pem")), "secrets");
        assert_eq!(classify(&edit("docs/credentials.md")), "secrets");
        assert_eq!(classify(&edit("src/environment.rs")), "file_change");
        assert_eq!(classify(&ToolKind::FileRead("README.md".into())), "other");
        assert_eq!(
            classify(&ToolKind::FileRead("/home/a/.ssh/id_rsa".into())),
            "secrets"
        );
        assert_eq!(classify(&ToolKind::Fetch("https://x".into())), "network");
        assert_eq!(classify(&ToolKind::Other), "other");
    }

    #[test]
    fn a_session_allow_covers_the_same_action_and_tool_only() {
        let mut b = SessionBroker::default();
        let ask = |cmd: &str, tool: &str| {
            Ask::from_agent(
                "claude",
                tool,
                &ToolKind::Shell(cmd.into()),
                json!({}),
                cmd,
                None,
            )
        };
        let (tx, mut rx) = oneshot::channel();
        assert_eq!(b.waiting("a1".into(), ask("ls", "Bash"), tx), None);
        let delivered = b.resolved(
            "a1",
            Decision {
                allow: true,
                for_session: true,
                reason: None,
            },
        );
        assert!(delivered.is_some_and(|d| d.allow));
        assert!(rx.try_recv().unwrap().allow);
        assert!(b.allowed_for_session(&ask("pwd", "Bash")));
        assert!(
            !b.allowed_for_session(&ask("git push", "Bash")),
            "another class"
        );
        assert!(!b.allowed_for_session(&ask("ls", "Shell")), "another tool");
        // A decision that arrives before the id is known is kept for it.
        assert_eq!(b.resolved("a2", Decision::deny("no")), None);
        let (tx, mut rx) = oneshot::channel();
        let delivered = b.waiting("a2".into(), ask("git push", "Bash"), tx);
        assert_eq!(delivered, Some(Decision::deny("no")));
        assert!(!rx.try_recv().unwrap().allow);
        // A decision nobody waits for any more (the agent withdrew its request) reached no one.
        let (tx, rx) = oneshot::channel();
        b.waiting("a4".into(), ask("git push", "Bash"), tx);
        drop(rx);
        assert_eq!(b.resolved("a4", Decision::deny("late")), None);
        // Waiters hear a deny when the session ends.
        let (tx, mut rx) = oneshot::channel();
        b.waiting("a3".into(), ask("rm x", "Bash"), tx);
        b.close();
        assert!(!rx.try_recv().unwrap().allow);
    }

    #[test]
    fn two_asks_given_one_approval_both_hear_its_decision_once() {
        let mut b = SessionBroker::default();
        let ask = || {
            Ask::from_agent(
                "claude",
                "Bash",
                &ToolKind::Shell("git push".into()),
                json!({}),
                "git push",
                None,
            )
        };
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        assert_eq!(b.waiting("a1".into(), ask(), tx1), None);
        assert_eq!(b.waiting("a1".into(), ask(), tx2), None);
        let allow = Decision {
            allow: true,
            for_session: false,
            reason: None,
        };
        assert_eq!(b.resolved("a1", allow.clone()), Some(allow.clone()));
        assert_eq!(rx1.try_recv().ok(), Some(allow.clone()));
        assert_eq!(rx2.try_recv().ok(), Some(allow.clone()));
        // The same command again (resent after a reconnect) reaches no one a second time.
        assert_eq!(b.resolved("a1", Decision::deny("again")), None);
        // An ask the server answers with an approval already decided hears that decision.
        let (tx3, mut rx3) = oneshot::channel();
        assert_eq!(b.waiting("a1".into(), ask(), tx3), Some(allow.clone()));
        assert_eq!(rx3.try_recv().ok(), Some(allow));
    }
}
