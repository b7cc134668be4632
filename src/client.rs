//! The researcher's and reviewer's command line toward a coordinator: `stroom run`, `stroom
//! results`, `stroom budget`. The token comes from `STROOM_TOKEN` or `--token-file`; the
//! coordinator's address from `--coordinator` / `STROOM_COORDINATOR`; the federation CA that signed
//! its certificate from `--ca` / `STROOM_CA`.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// The coordinator's base address.
    #[arg(
        long,
        env = "STROOM_COORDINATOR",
        default_value = "https://localhost:8443"
    )]
    pub coordinator: String,
    /// The federation CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long, env = "STROOM_CA")]
    pub ca: PathBuf,
    /// A file holding the bearer token (instead of STROOM_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(c: &Connection) -> Result<Client> {
        let token = match &c.token_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the token from {}", f.display()))?,
            None => std::env::var("STROOM_TOKEN")
                .context("no token: set STROOM_TOKEN or pass --token-file FILE")?,
        };
        let token = token.trim().to_string();
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(&c.ca).with_context(|| format!("reading CA {}", c.ca.display()))?;
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca)
                .with_context(|| format!("CA {} is not a PEM certificate", c.ca.display()))?])
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Client {
            http,
            base: c.coordinator.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<serde_json::Value> {
        let r = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.base))?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.context("the coordinator's answer")?;
        if !status.is_success() {
            let problems: Vec<String> = body["problems"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p.as_str().map(|p| format!("\n  {p}")))
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "coordinator refused ({status}, {}): {}{}",
                body["error"].as_str().unwrap_or("error"),
                body["message"].as_str().unwrap_or(&body.to_string()),
                problems.concat()
            );
        }
        Ok(body)
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn start_run(&self, indicator: &str, period: &str) -> Result<String> {
        let body = self
            .send(
                self.http
                    .post(format!("{}/v1/runs", self.base))
                    .json(&serde_json::json!({ "indicator": indicator, "period": period })),
            )
            .await?;
        Ok(body["id"].as_str().context("run id")?.to_string())
    }

    pub async fn run(&self, id: &str) -> Result<serde_json::Value> {
        self.send(self.http.get(format!("{}/v1/runs/{id}", self.base)))
            .await
    }

    pub async fn budget(&self) -> Result<serde_json::Value> {
        self.send(self.http.get(format!("{}/v1/budget", self.base)))
            .await
    }

    pub async fn budget_plan(&self) -> Result<serde_json::Value> {
        self.send(self.http.get(format!("{}/v1/budget/plan", self.base)))
            .await
    }
}

fn finished(status: &str) -> bool {
    matches!(status, "done" | "partial" | "failed")
}

/// `stroom run`: start, show progress until finished, print the results.
pub async fn run(c: &Connection, indicator: &str, period: &str) -> Result<std::process::ExitCode> {
    let client = Client::new(c)?;
    let id = client.start_run(indicator, period).await?;
    eprintln!("run {id}: {indicator} over {period}");
    let started = Instant::now();
    let run = loop {
        let run = client.run(&id).await?;
        let status = run["status"].as_str().unwrap_or("?").to_string();
        eprint!("\r  {status:<8} {:>6.1}s", started.elapsed().as_secs_f64());
        let _ = std::io::stderr().flush();
        if finished(&status) {
            eprintln!();
            break run;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    print_results(&run, "table")?;
    Ok(if run["status"] == "failed" {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// `stroom results`: a finished run's national records.
pub async fn results(c: &Connection, id: &str, format: &str) -> Result<std::process::ExitCode> {
    let run = Client::new(c)?.run(id).await?;
    if !finished(run["status"].as_str().unwrap_or("")) {
        bail!("run {id} is still {}", run["status"]);
    }
    print_results(&run, format)?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn number(v: &serde_json::Value) -> String {
    v.as_f64().map(|x| x.to_string()).unwrap_or_default()
}

pub fn print_results(run: &serde_json::Value, format: &str) -> Result<()> {
    let empty = Vec::new();
    let records = run["results"].as_array().unwrap_or(&empty);
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(records)?),
        "csv" => {
            println!(
                "indicator,period,group,estimate,ci_low,ci_high,providers_reporting,providers_total,rho"
            );
            for r in records {
                println!(
                    "{},{},\"{}\",{},{},{},{},{},{}",
                    r["indicator"].as_str().unwrap_or(""),
                    r["period"].as_str().unwrap_or(""),
                    r["group"].to_string().replace('"', "\"\""),
                    number(&r["estimate"]),
                    number(&r["ci_low"]),
                    number(&r["ci_high"]),
                    r["providers_reporting"],
                    r["providers_total"],
                    r["rho"]
                );
            }
        }
        _ => {
            println!(
                "{} {} — {}{}",
                run["indicator"].as_str().unwrap_or(""),
                run["period"].as_str().unwrap_or(""),
                run["status"].as_str().unwrap_or(""),
                run["error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            println!(
                "{:<8} {:<30} {:>12} {:>25} {:>10}",
                "period", "group", "estimate", "95% interval (noise)", "providers"
            );
            for r in records {
                let group = r["group"]
                    .as_object()
                    .map(|g| {
                        g.values()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_default();
                let f = |v: &serde_json::Value| {
                    v.as_f64().map(|x| format!("{x:.1}")).unwrap_or("-".into())
                };
                println!(
                    "{:<8} {:<30} {:>12} {:>25} {:>10}",
                    r["period"].as_str().unwrap_or(""),
                    group,
                    f(&r["estimate"]),
                    format!("[{}, {}]", f(&r["ci_low"]), f(&r["ci_high"])),
                    format!("{}/{}", r["providers_reporting"], r["providers_total"])
                );
            }
        }
    }
    Ok(())
}

/// `stroom budget`: remaining budget per node and data period, as each node reports it.
pub async fn budget(c: &Connection) -> Result<std::process::ExitCode> {
    let body = Client::new(c)?.budget().await?;
    println!(
        "{:<8} {:<8} {:>10} {:>10} {:>10} {:>9}",
        "node", "period", "ρ budget", "ρ spent", "ρ left", "releases"
    );
    let empty = Vec::new();
    let mut unreachable = 0;
    for n in body["nodes"].as_array().unwrap_or(&empty) {
        let b = &n["budget"];
        if b.is_null() {
            unreachable += 1;
            println!(
                "{:<8} unreachable: {}",
                n["node"].as_str().unwrap_or(""),
                n["error"].as_str().unwrap_or("")
            );
            continue;
        }
        // One line per data period with spend; a node that spent nothing shows its budget once.
        let periods = b["periods"].as_array().filter(|p| !p.is_empty());
        let rows: Vec<&serde_json::Value> = match periods {
            Some(p) => p.iter().collect(),
            None => vec![b],
        };
        for p in rows {
            println!(
                "{:<8} {:<8} {:>10.4} {:>10.4} {:>10.4} {:>9}",
                n["node"].as_str().unwrap_or(""),
                p["period"]
                    .as_str()
                    .or(b["budget_period"].as_str())
                    .unwrap_or(""),
                b["rho_budget"].as_f64().unwrap_or(f64::NAN),
                p["rho_spent"].as_f64().unwrap_or(f64::NAN),
                p["rho_remaining"].as_f64().unwrap_or(f64::NAN),
                p["releases"]
            );
        }
    }
    Ok(if unreachable == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// `stroom budget --plan`: per node, a year of rounds against its budget, then what each base
/// indicator costs (once per group of nodes with the same lines). Fails when a plan does not fit.
pub async fn budget_plan(c: &Connection) -> Result<std::process::ExitCode> {
    let body = Client::new(c)?.budget_plan().await?;
    let rounds = body["rounds_per_year"].as_u64().unwrap_or(4);
    println!(
        "Budget plan: {rounds} quarterly rounds and the annual figures of one data year, over the approved catalog"
    );
    println!(
        "{:<8} {:<10} {:>10} {:>10} {:>10}  fits",
        "node", "period", "ρ budget", "ρ planned", "ρ left"
    );
    let empty = Vec::new();
    let nodes = body["nodes"].as_array().unwrap_or(&empty);
    let (mut over, mut unknown) = (0, 0);
    let f = |v: &serde_json::Value| v.as_f64().map_or("?".to_string(), |x| format!("{x:.4}"));
    for n in nodes {
        let fits = match n["fits"].as_bool() {
            Some(true) => "yes",
            Some(false) => {
                over += 1;
                "NO"
            }
            None => {
                unknown += 1;
                "unknown (node not reachable)"
            }
        };
        println!(
            "{:<8} {:<10} {:>10} {:>10} {:>10}  {fits}",
            n["node"].as_str().unwrap_or(""),
            n["granularity"].as_str().unwrap_or("?"),
            f(&n["rho_budget"]),
            f(&n["rho_planned"]),
            f(&n["rho_headroom"]),
        );
    }
    let mut groups: Vec<(Vec<String>, &serde_json::Value)> = Vec::new();
    for n in nodes {
        let name = n["node"].as_str().unwrap_or("").to_string();
        match groups.iter_mut().find(|(_, l)| **l == n["lines"]) {
            Some((names, _)) => names.push(name),
            None => groups.push((vec![name], &n["lines"])),
        }
    }
    for (names, lines) in groups {
        println!("\nCost per base indicator for {}:", names.join(", "));
        println!(
            "{:<44} {:<8} {:>10} {:>9} {:>10}",
            "indicator", "grain", "ρ/release", "releases", "ρ/period"
        );
        for l in lines.as_array().unwrap_or(&empty) {
            println!(
                "{:<44} {:<8} {:>10} {:>9} {:>10}",
                l["indicator"].as_str().unwrap_or(""),
                l["grain"].as_str().unwrap_or(""),
                f(&l["rho_per_release"]),
                l["releases_per_period"],
                f(&l["rho_per_period"]),
            );
        }
    }
    if unknown > 0 {
        eprintln!("{unknown} node(s) did not report a budget; their plan is unchecked");
    }
    Ok(if over == 0 && unknown == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        if over > 0 {
            eprintln!("the plan exceeds the budget of {over} node(s)");
        }
        std::process::ExitCode::FAILURE
    })
}
