//! How `runsignal watch` shows what it follows (bars, plain lines or JSON)
//! and the last known outcome it keeps while doing so.

use std::collections::HashMap;
use std::io::IsTerminal;

use serde_json::Value;

use super::args::{Outcome, Target};
use super::bars::{done_style, kind_name, phase_name, str_of, where_what, write_stdout, Bars};

/// Renders events (bars, plain lines or JSON) and keeps what decides the
/// outcome.
pub(super) struct View {
    job_target: bool,
    json: bool,
    logs: bool,
    bars: Option<Bars>,
    /// Last stage/step each job reported (the first-signal line names them).
    stages: HashMap<String, (Option<String>, Option<String>)>,
    /// Last known outcome (terminal first signal, terminal job state).
    pub known: Option<Outcome>,
    target: String,
}

impl View {
    pub(super) fn new(target: &Target, json: bool, logs: bool) -> View {
        let bars = (!json && std::io::stdout().is_terminal()).then(Bars::new);
        View {
            job_target: matches!(target, Target::Job(_)),
            json,
            logs,
            bars,
            stages: HashMap::new(),
            known: None,
            target: format!("{} {}", target.noun(), target.id()),
        }
    }

    /// A human line: above the bars, or plain on stdout; never with `--json`.
    pub(super) fn line(&self, text: String) {
        if self.json {
            return;
        }
        match &self.bars {
            Some(b) => {
                let _ = b.mp.println(text);
            }
            None => write_stdout(&text),
        }
    }

    /// A notice on stderr (the bars are lifted while it prints).
    pub(super) fn notice(&self, text: &str) {
        let print = || eprintln!("runsignal watch: {text}");
        match &self.bars {
            Some(b) => b.mp.suspend(print),
            None => print(),
        }
    }

    /// The job as `GET /jobs/{id}` returns it (job watch, before streaming).
    pub(super) fn job_snapshot(&mut self, job: &Value) {
        let id = job["job_id"].as_str().unwrap_or_default().to_owned();
        let state = job["state"].as_str().unwrap_or("unknown");
        self.known = Outcome::from_status(state);
        let p = &job["progress"];
        let (stage, step) = (str_of(&p["stage"]), str_of(&p["step"]));
        let percent = p["percent"].as_f64();
        let detail = where_what(stage, step, str_of(&p["message"]));
        if let Some(bars) = &mut self.bars {
            let bar = bars.job(&id);
            if let Some(pct) = percent {
                bar.set_position(pct.round() as u64);
            }
            bar.set_message(format!("{state} {detail}").trim_end().to_owned());
            // No first signal on the pack-run stream: the top line names the job.
            let run = job["run_id"].as_str().unwrap_or("?");
            let pack = job["pack"].as_str().unwrap_or("?");
            bars.signal.set_prefix("pack");
            bars.signal
                .set_message(format!("{pack} · run {run} · attempt {}", job["attempt"]));
        } else {
            let pct = percent.map(|p| format!(" {p:.0}%")).unwrap_or_default();
            let line = format!(
                "job {id} ({}) {state}{pct} {detail}",
                job["pack"].as_str().unwrap_or("?")
            );
            self.line(line.trim_end().to_owned());
        }
    }

    /// Show one event; `Some` when it is the final `completed`.
    pub(super) fn event(&mut self, id: u64, name: &str, raw: &str) -> Option<Outcome> {
        let data: Value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
        if self.json {
            // The server's data is one line of JSON: print it as sent.
            let body = if data.is_string() || raw.contains('\n') {
                data.to_string()
            } else {
                raw.trim().to_owned()
            };
            let name = Value::from(name);
            write_stdout(&format!(r#"{{"id":{id},"event":{name},"data":{body}}}"#));
        }
        match name {
            "first_signal" => self.first_signal(id, &data),
            "job" => self.job(id, &data),
            "progress" => self.progress(id, &data),
            "step" => self.step(id, &data),
            "log" => self.log(&data),
            "completed" => return Some(self.completed(id, &data)),
            _ => {}
        }
        None
    }

    fn first_signal(&mut self, id: u64, data: &Value) {
        let signal = &data["signal"];
        let kind = signal["kind"].as_u64();
        if let Some(outcome) = kind.and_then(Outcome::from_signal_kind) {
            self.known = Some(outcome);
        }
        // The signal names its phase; the deciding job's last progress
        // report names the stage and step more precisely.
        let reported = str_of(&signal["jobId"]).and_then(|j| self.stages.get(j));
        let stage = reported.and_then(|(stage, _)| stage.clone()).or_else(|| {
            match phase_name(signal["phase"].as_u64()) {
                "unknown" => None,
                phase => Some(phase.to_owned()),
            }
        });
        let step = reported.and_then(|(_, step)| step.clone());
        let place = where_what(stage.as_deref(), step.as_deref(), None);
        let mut text = kind_name(kind).to_owned();
        for part in [place.as_str(), signal["summary"].as_str().unwrap_or("")] {
            if !part.is_empty() {
                text.push_str(" · ");
                text.push_str(part);
            }
        }
        match &self.bars {
            Some(bars) => bars.signal.set_message(text),
            None => self.line(format!("[{id}] signal {text}")),
        }
    }

    fn job(&mut self, id: u64, env: &Value) {
        let job = env["jobId"].as_str().unwrap_or("?");
        let ty = env["type"].as_str().unwrap_or("");
        let p = &env["payload"];
        let state = str_of(&p["state"])
            .or_else(|| ty.strip_prefix("job."))
            .unwrap_or("?");
        let detail = match ty {
            "job.blocked" if p["blocked"] == Value::Bool(false) => "unblocked".to_owned(),
            "job.blocked" => format!("blocked: {}", p["reason"].as_str().unwrap_or("")),
            "job.retry_scheduled" => format!(
                "retry scheduled after attempt {}/{}: {}",
                p["attempt"],
                p["maxAttempts"],
                p["error"]["message"].as_str().unwrap_or("")
            ),
            _ => match str_of(&p["error"]["message"]) {
                Some(m) => format!("{state}: {m}"),
                None => state.to_owned(),
            },
        };
        if self.job_target {
            if let Some(outcome) = Outcome::from_job_type(ty) {
                self.known = Some(outcome);
            }
        }
        match &mut self.bars {
            Some(bars) => {
                let bar = bars.job(job);
                match Outcome::from_job_type(ty) {
                    Some(Outcome::Succeeded) => {
                        bar.set_position(100);
                        bar.finish_with_message(format!("✓ {detail}"));
                    }
                    Some(_) => bar.abandon_with_message(format!("✗ {detail}")),
                    None => bar.set_message(detail),
                }
            }
            None => self.line(format!("[{id}] job {job} {detail}")),
        }
    }

    fn progress(&mut self, id: u64, env: &Value) {
        let job = env["jobId"].as_str().unwrap_or("?");
        let p = &env["payload"];
        let (stage, step) = (str_of(&p["stage"]), str_of(&p["step"]));
        let entry = self.stages.entry(job.to_owned()).or_default();
        if let Some(s) = stage {
            entry.0 = Some(s.to_owned());
        }
        if let Some(s) = step {
            entry.1 = Some(s.to_owned());
        }
        let percent = p["percent"].as_f64();
        let detail = where_what(stage, step, str_of(&p["message"]));
        match &mut self.bars {
            Some(bars) => {
                let bar = bars.job(job);
                if let Some(pct) = percent {
                    bar.set_position(pct.round() as u64);
                }
                bar.set_message(detail);
            }
            None => {
                let pct = percent.map(|p| format!(" {p:.0}%")).unwrap_or_default();
                self.line(format!("[{id}] progress {job}{pct} {detail}"));
            }
        }
    }

    fn step(&mut self, id: u64, data: &Value) {
        let index = data["stepIndex"].as_i64().unwrap_or(-1);
        let name = data["stepName"].as_str().unwrap_or("");
        let status = data["status"].as_str().unwrap_or("?");
        let exit = match data["exitCode"].as_i64() {
            Some(code) => format!(" (exit {code})"),
            None => String::new(),
        };
        let job_target = self.job_target;
        match &mut self.bars {
            Some(bars) => {
                if job_target {
                    // The pack-run stream's only news about the job itself.
                    if let Some(job) = bars.jobs.values().next() {
                        job.set_message(format!("step {index} {name} {status}"));
                    }
                }
                let bar = bars.step(index);
                match status {
                    "running" | "pending" => bar.set_message(format!("{name} {status}")),
                    "succeeded" => {
                        bar.set_style(done_style());
                        bar.finish_with_message(format!("✓ {name}{exit}"));
                    }
                    other => {
                        bar.set_style(done_style());
                        bar.abandon_with_message(format!("✗ {name} {other}{exit}"));
                    }
                }
            }
            None => self.line(format!("[{id}] step #{index} {name} {status}{exit}")),
        }
    }

    fn log(&self, data: &Value) {
        if !self.logs {
            return;
        }
        let step = match data["stepIndex"].as_i64() {
            Some(i) => format!("#{i} "),
            None => String::new(),
        };
        self.line(format!(
            "  {step}{}| {}",
            data["stream"].as_str().unwrap_or("stdout"),
            data["line"].as_str().unwrap_or("")
        ));
    }

    fn completed(&mut self, id: u64, env: &Value) -> Outcome {
        let outcome = if self.job_target {
            env["type"].as_str().and_then(Outcome::from_job_type)
        } else {
            env["payload"]["status"]
                .as_str()
                .and_then(Outcome::from_status)
        };
        // An unrecognised end is not reported as success.
        let outcome = outcome.or(self.known).unwrap_or(Outcome::Failed);
        if self.job_target {
            let job = env["jobId"].as_str().unwrap_or("?").to_owned();
            if let Some(bars) = &mut self.bars {
                let bar = bars.job(&job);
                match outcome {
                    Outcome::Succeeded => {
                        bar.set_position(100);
                        bar.finish_with_message("✓ done");
                    }
                    other => bar.abandon_with_message(format!("✗ {}", other.as_str())),
                }
            }
        }
        if self.bars.is_none() {
            self.line(format!("[{id}] completed {}", outcome.as_str()));
        }
        outcome
    }

    /// Leave the bars as they are and print the verdict; the exit code.
    pub(super) fn finish(mut self, outcome: Option<Outcome>) -> u8 {
        if let Some(bars) = self.bars.take() {
            let verdict = outcome.map_or("ended", Outcome::as_str);
            bars.signal.finish();
            for bar in bars.jobs.values().chain(bars.steps.values()) {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
            drop(bars);
            // The last bar's line is not terminated.
            write_stdout(&format!("\n{} {verdict}", self.target));
        } else if !self.json {
            let verdict = outcome.map_or("ended (already complete)", Outcome::as_str);
            write_stdout(&format!("{} {verdict}", self.target));
        }
        outcome.map_or(0, Outcome::code)
    }
}
