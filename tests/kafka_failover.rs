//! Failover that holds, against a real broker (tansu via scripts/kafka.sh):
//! at-least-once input (copies of records, and contradicting records),
//! checksummed snapshots, and scale-out over every input partition.

mod kafka_support;

use kafka_support::*;
use prescale::events::*;
use prescale::import::events_file::{read_events, EventsWriter};
use prescale::io::kafka::codec::headers;
use prescale::io::kafka::produce::Pace;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The backtest's input with every 4th record delivered twice in a row,
/// every 7th once more 40 records later (a producer's retry after others
/// went out), and every 150th job submission followed by a record with its
/// job id and another vCPU count. Returns the events and how many
/// contradict one before them.
fn with_copies(events: &[Event]) -> (Vec<Event>, usize) {
    let mut out = Vec::new();
    let mut conflicts = 0;
    let mut later: Vec<(usize, Event)> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        out.push(ev.clone());
        if i % 4 == 0 {
            out.push(ev.clone());
        }
        if i % 7 == 0 {
            later.push((i + 40, ev.clone()));
        }
        if let (0, Event::JobSubmitted(j)) = (i % 150, ev) {
            let mut bad = j.clone();
            bad.vcpus += 3.0;
            out.push(Event::JobSubmitted(bad));
            conflicts += 1;
        }
        while later.first().is_some_and(|(at, _)| *at <= i) {
            out.push(later.remove(0).1);
        }
    }
    out.extend(later.into_iter().map(|(_, e)| e));
    (out, conflicts)
}

/// At-least-once input is idempotent: the backtest's input produced with
/// copies interleaved (and a few records contradicting earlier ones) through
/// `prescale produce` and `prescale run` gives exactly the commands
/// `prescale backtest --commands` decides for the input without them; each
/// contradicting record is dead-lettered with a reason naming its field.
#[test]
fn duplicated_input_gives_the_reference_commands() {
    let broker = Broker::shared();
    let bt = backtest_replay();
    let events = read_events(&bt.events, false).unwrap().events;
    let (copied, conflicts) = with_copies(&events);
    assert!(conflicts >= 2, "the input holds contradicting records");
    let state = tempfile::tempdir().unwrap();
    let input = state.path().join("copied.avro");
    let mut w = EventsWriter::create(&input).unwrap();
    for ev in &copied {
        w.append(ev).unwrap();
    }
    w.finish().unwrap();

    let cfg = config(broker, "copies", state.path());
    let args = cli_args(&cfg);
    run_ok(
        prescale()
            .arg("produce")
            .arg(&input)
            .args(&args)
            .arg("--create-topics"),
    );
    let out = run_ok(prescale().arg("run").args(&args).args([
        "--instance",
        "solo",
        "--exit-when-idle-ms",
        "1000",
    ]));
    let report = run_report(&out);
    assert_eq!(report["finished"], true, "{report}");
    assert_eq!(report["events"], copied.len() as u64, "{report}");
    assert_eq!(report["dead_letters"], conflicts as u64, "{report}");
    let lines = tail_lines(&cfg);
    assert_eq!(lines.len(), bt.commands.len(), "each command once");
    assert_same_lines(&json_lines_by_id(&lines), &bt.commands);

    // The dead letters name the record and the field.
    let (_, h) = first_dead_letter(&cfg, &cfg.topics.job_submission(), 1);
    let error = &h[headers::DLQ_ERROR];
    assert!(
        error.contains("JobSubmitted") && error.contains("field `vcpus`"),
        "{error}"
    );
}

/// The snapshot files of a state directory (not the `.prev` ones).
fn snapshots(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

/// Move one input offset of a snapshot file back by `by`, textually, so
/// the file stays valid JSON with its digest unchanged.
fn move_an_offset_back(path: &std::path::Path, by: i64) -> (String, i32, i64) {
    let text = std::fs::read_to_string(path).unwrap();
    let snap: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (topic, partition, offset) = snap["offsets"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(t, _)| t.contains("job-submission"))
        .flat_map(|(t, m)| {
            m.as_object()
                .unwrap()
                .iter()
                .map(move |(p, o)| (t.clone(), p.parse::<i32>().unwrap(), o.as_i64().unwrap()))
        })
        .find(|(_, _, o)| *o > by)
        .expect("a job partition past its start");
    let at = text.find("\"offsets\":").unwrap();
    let (head, tail) = text.split_at(at);
    let topic_at = tail.find(&format!("\"{topic}\":{{")).unwrap();
    let (mid, rest) = tail.split_at(topic_at);
    let old = format!("\"{partition}\":{offset}");
    let new = format!("\"{partition}\":{}", offset - by);
    assert!(rest.contains(&old), "{rest:.200}");
    let edited = format!("{head}{mid}{}", rest.replacen(&old, &new, 1));
    serde_json::from_str::<serde_json::Value>(&edited).expect("still valid JSON");
    std::fs::write(path, edited).unwrap();
    (topic, partition, offset)
}

/// A snapshot whose one offset was moved back (still valid JSON) fails its
/// checksum and is refused; the instance restores the snapshot before it
/// and the outcome is exactly the file replay's.
#[test]
fn an_edited_snapshot_is_refused_and_the_outcome_is_exact() {
    let broker = Broker::shared();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "edited", state.path());
    create_topics(&cfg);
    let evs = events(30, 24);
    let want = by_id(&factory().replay(&evs));
    let half = evs.len() / 2;
    produce(&cfg, &evs[..half], 0, Pace::AsFastAsPossible);

    // Run through the first half, then checkpoint twice and stop: the
    // current snapshot and the one before it reflect the same offsets.
    let a = spawn_service(&cfg, "first", Duration::from_secs(600));
    let started = Instant::now();
    while a.stats.events.load(Ordering::Relaxed) < half as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "first half not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    use prescale::io::kafka::service::Control;
    a.control.blocking_send(Control::Checkpoint).unwrap();
    a.control.blocking_send(Control::Stop).unwrap();
    let ra = a.handle.join().unwrap();
    assert!(!ra.finished);

    // The snapshot of the whole assignment (a fresh group may first have
    // been given fewer partitions).
    let files: Vec<_> = snapshots(state.path())
        .into_iter()
        .filter(|p| {
            prescale::checkpoint::read(p)
                .ok()
                .flatten()
                .is_some_and(|s| s.assignment.len() == 9)
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let (topic, partition, offset) = move_an_offset_back(&files[0], 20);
    assert!(prescale::checkpoint::read(&files[0]).is_err());

    produce(&cfg, &evs[half..], half as u64, Pace::AsFastAsPossible);
    let b = spawn_service(&cfg, "second", Duration::from_millis(1000));
    let rb = b.handle.join().unwrap();
    assert!(rb.finished, "{rb:?}");
    assert_eq!(rb.refused_snapshots, 1, "{rb:?}");
    assert!(rb.restored_from_snapshot, "{rb:?}");
    // Every event applied once: the final snapshot covers the input.
    let last = prescale::checkpoint::read(&files[0]).unwrap().unwrap();
    assert_eq!(
        last.engine["counters"]["events"],
        evs.len() as u64,
        "{topic}/{partition} was at {offset}"
    );
    assert_eq!(last.engine["counters"]["duplicates"], 0);
    assert_same(&distinct(&read_commands(&cfg)), &want);
}

/// Input over many environments, so every partition of every job topic
/// carries some and every instance of a group decides something: `ENVS`
/// puts all job events in two of three partitions.
pub fn spread_events(envs: usize, buckets: i64, jobs_per_bucket: i64) -> Vec<Event> {
    let names: Vec<String> = (0..envs).map(|i| format!("env-{i:02}")).collect();
    let evs = events(buckets, jobs_per_bucket)
        .into_iter()
        .enumerate()
        .map(|(i, ev)| match ev {
            Event::JobSubmitted(mut j) => {
                j.compute_environment = names[i % envs].as_str().into();
                Event::JobSubmitted(j)
            }
            other => other,
        })
        .collect();
    rename_completions(evs)
}

/// Completions follow their submission's environment.
fn rename_completions(mut evs: Vec<Event>) -> Vec<Event> {
    let mut env_of = std::collections::HashMap::new();
    for ev in &mut evs {
        match ev {
            Event::JobSubmitted(j) => {
                env_of.insert(j.job_id.clone(), j.compute_environment.clone());
            }
            Event::JobCompleted(c) => {
                c.compute_environment = env_of[&c.job_id].clone();
            }
            _ => {}
        }
    }
    evs
}

/// N = 1, 2 and 3 instances in one group over input spread across every
/// partition: every instance decides something, and together they publish
/// the set one instance publishes.
#[test]
fn one_two_and_three_instances_publish_the_same_set() {
    let broker = Broker::shared();
    let evs = spread_events(24, 24, 30);
    let want = by_id(&factory().replay(&evs));
    assert!(
        want.len() > 100,
        "input must make decisions ({})",
        want.len()
    );
    for n in 1..=3usize {
        let state = tempfile::tempdir().unwrap();
        let cfg = config(broker, &format!("n{n}"), state.path());
        create_topics(&cfg);
        let names: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
        let svcs: Vec<Running> = names
            .iter()
            .map(|name| spawn_service(&cfg, name, Duration::from_millis(3000)))
            .collect();
        wait_for_split_n(&svcs);
        produce(&cfg, &evs, 0, Pace::AsFastAsPossible);
        let reports: Vec<_> = svcs.into_iter().map(|s| s.handle.join().unwrap()).collect();
        let published = read_commands(&cfg);
        let deciders: BTreeSet<&str> = published.iter().map(|p| p.instance.as_str()).collect();
        assert_eq!(
            deciders.len(),
            n,
            "every instance decides something: {deciders:?} {reports:?}"
        );
        assert_same(&distinct(&published), &want);
    }
}

/// Wait until the instances have settled on a split of the group's nine
/// partitions, each holding some.
fn wait_for_split_n(svcs: &[Running]) {
    let started = Instant::now();
    loop {
        let owned: Vec<u64> = svcs
            .iter()
            .map(|s| s.stats.assigned.load(Ordering::Relaxed))
            .collect();
        if owned.iter().all(|&x| x > 0) && owned.iter().sum::<u64>() == 9 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "group did not split: {owned:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `prescale run` child whose log lines (colour codes removed) arrive on
/// a channel.
struct Child {
    proc: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Everything logged so far.
    log: Vec<String>,
}

impl Child {
    fn spawn(args: &[String], instance: &str, extra: &[&str]) -> Child {
        Child::spawn_idle(args, instance, 2000, extra)
    }

    /// `spawn` with its own idle limit (`--exit-when-idle-ms`).
    fn spawn_idle(args: &[String], instance: &str, idle_ms: u64, extra: &[&str]) -> Child {
        let mut c = prescale();
        c.arg("run")
            .args(args)
            .args(["--instance", instance, "--exit-when-idle-ms"])
            .arg(idle_ms.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut proc = c.spawn().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = proc.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut plain = String::new();
                let mut esc = false;
                for ch in line.chars() {
                    match (esc, ch) {
                        (false, '\u{1b}') => esc = true,
                        (true, 'm') => esc = false,
                        (false, c) => plain.push(c),
                        _ => {}
                    }
                }
                if tx.send(plain).is_err() {
                    return;
                }
            }
        });
        Child {
            proc,
            lines,
            log: Vec::new(),
        }
    }

    /// Take the lines logged since the last call.
    fn pump(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
    }

    /// The partitions of its latest assignment (`topic/partition`), with
    /// the time the line was read.
    fn owned(&self) -> Option<Vec<String>> {
        let l = self
            .log
            .iter()
            .rev()
            .find(|l| l.contains("assigned") || l.contains("partitions revoked"))?;
        if l.contains("partitions revoked") {
            return Some(Vec::new());
        }
        let at = l.find("owned=")? + "owned=".len();
        let rest = l[at..].trim_start_matches('"');
        let end = rest.find([' ', '"']).unwrap_or(rest.len());
        Some(
            rest[..end]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }
}

/// A failed assertion must not leave the child running.
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// Partitions of a topic holding messages.
fn non_empty_partitions(cfg: &prescale::io::kafka::config::KafkaConfig, topic: &str) -> Vec<i32> {
    let consumer: BaseConsumer = prescale::io::kafka::client::consumer_config(cfg, None)
        .create()
        .unwrap();
    prescale::io::kafka::client::partitions_of(consumer.client(), topic, Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .filter(|&p| {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            hi > lo
        })
        .collect()
}

/// Two `prescale run` processes in one group; the one holding the job
/// partitions is killed with SIGKILL mid-stream and not restarted.
///
/// The survivor takes the lost partitions over, replays them and publishes
/// every command of the backtest, and never reports itself finished
/// before. A broker whose coordinator evicts the dead member after its
/// session timeout (Kafka) hands them over itself; tansu 0.6.0 does not
/// (see docs/service.md, "A lost instance"), and the survivor adopts them
/// once their group offsets have stood still for 30–40 s. Until then the
/// survivor must still be running, saying which partitions the group has
/// not consumed.
#[test]
fn a_lost_instance_never_leaves_a_finished_survivor_with_input_unread() {
    lost_instance(2);
}

/// The same with three instances: two survivors may both adopt.
#[test]
fn a_lost_instance_of_three_is_taken_over() {
    lost_instance(3);
}

/// `n` instances in one group; the one holding the busy job partition is
/// SIGKILLed while input arrives and not restarted (see the test above).
fn lost_instance(n: usize) {
    let broker = Broker::shared();
    let bt = backtest_replay();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, &format!("lost{n}"), state.path());
    let args = cli_args(&cfg);
    create_topics(&cfg);
    let names = ["a", "b", "c"];
    let mut all: Vec<Child> = names[..n]
        .iter()
        .map(|name| Child::spawn(&args, name, &[]))
        .collect();
    let started = Instant::now();
    let split: Vec<Vec<String>> = loop {
        all.iter_mut().for_each(Child::pump);
        let owned: Vec<Vec<String>> = all.iter().filter_map(Child::owned).collect();
        if owned.len() == n
            && owned.iter().all(|o| !o.is_empty())
            && owned.iter().map(Vec::len).sum::<usize>() == 9
        {
            break owned;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no split");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Live input over ~4 s; the kill comes 1 s in, so the lost partitions
    // still receive input after it.
    let mut producer = prescale()
        .arg("produce")
        .arg(&bt.events)
        .args(&args)
        .args(["--rate", &(bt.n_events as f64 / 4.0).to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let jobs = cfg.topics.job_submission();
    let busy: Vec<String> = loop {
        std::thread::sleep(Duration::from_millis(1000));
        let busy: Vec<String> = non_empty_partitions(&cfg, &jobs)
            .into_iter()
            .map(|p| format!("{jobs}/{p}"))
            .collect();
        if !busy.is_empty() {
            break busy;
        }
    };
    // Kill the instance holding the (first) busy job partition.
    let v = split.iter().position(|o| o.contains(&busy[0])).unwrap();
    let held = split[v].clone();
    let mut victim = all.remove(v);
    let mut survivors = all;
    victim.proc.kill().unwrap();
    let killed = Instant::now();
    victim.proc.wait().unwrap();
    assert!(
        producer.wait().unwrap().success(),
        "prescale produce failed"
    );
    // The lost partitions that hold input: what must be taken over (an
    // empty one may stay unassigned).
    let completions = cfg.topics.job_completion();
    let needed: Vec<String> = non_empty_partitions(&cfg, &jobs)
        .into_iter()
        .map(|p| format!("{jobs}/{p}"))
        .chain(
            non_empty_partitions(&cfg, &completions)
                .into_iter()
                .map(|p| format!("{completions}/{p}")),
        )
        .filter(|p| held.contains(p))
        .collect();
    assert!(!needed.is_empty(), "the victim held no input: {held:?}");
    let taken = wait_taken_over(&mut survivors, &needed, killed);
    eprintln!(
        "{n} instances: lost partitions taken over {:.1} s after the kill",
        taken.as_secs_f64()
    );
    for mut survivor in survivors {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = survivor.proc.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "a survivor did not finish");
            std::thread::sleep(Duration::from_millis(100));
        };
        survivor.pump();
        let mut out = String::new();
        std::io::Read::read_to_string(survivor.proc.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(status.success(), "{}", survivor.log.join("\n"));
        let report = run_report(&out);
        assert_eq!(report["finished"], true, "{report}");
    }
    let lines = tail_lines(&cfg);
    assert_same_lines(&json_lines_by_id(&lines), &bt.commands);
}

/// Wait (90 s at most) until some survivor's latest assignment holds every
/// `needed` partition (adopted, or handed over by the coordinator); how
/// long after the kill. No survivor may exit before.
fn wait_taken_over(survivors: &mut [Child], needed: &[String], killed: Instant) -> Duration {
    let holds = |l: &str| l.contains("assigned") && needed.iter().all(|p| l.contains(p.as_str()));
    loop {
        for s in survivors.iter_mut() {
            s.pump();
            if s.owned()
                .is_some_and(|o| needed.iter().all(|p| o.contains(p)))
            {
                return killed.elapsed();
            }
            if let Some(st) = s.proc.try_wait().unwrap() {
                // Its last lines, written just before it exited.
                std::thread::sleep(Duration::from_millis(500));
                s.pump();
                if s.log.iter().any(|l| holds(l)) {
                    return killed.elapsed();
                }
                panic!(
                    "a survivor exited ({st}) with the lost partitions {needed:?} unconsumed:\n{}",
                    s.log.join("\n")
                );
            }
        }
        if killed.elapsed() > Duration::from_secs(90) {
            let logs: Vec<String> = survivors.iter().map(|s| s.log.join("\n")).collect();
            survivors.iter_mut().for_each(|s| {
                let _ = s.proc.kill();
            });
            panic!(
                "the lost partitions {needed:?} were not taken over within 90 s:\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Messages on the command topics so far (the sum of their high watermarks).
fn command_messages(cfg: &prescale::io::kafka::config::KafkaConfig, c: &BaseConsumer) -> i64 {
    let mut n = 0;
    for t in [
        cfg.topics.scaling_command(),
        cfg.topics.preemption_command(),
    ] {
        for p in prescale::io::kafka::client::partitions_of(c.client(), &t, Duration::from_secs(5))
            .unwrap_or_default()
        {
            if let Ok((lo, hi)) = c.fetch_watermarks(&t, p, Duration::from_secs(5)) {
                n += hi - lo.min(hi);
            }
        }
    }
    n
}

/// Wait for a child `prescale run` to exit (at most `limit`); its report.
fn finish(mut c: Child, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    let status = loop {
        c.pump();
        if let Some(s) = c.proc.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "prescale run did not finish within {limit:?}:\n{}",
            c.log[c.log.len().saturating_sub(40)..].join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    c.pump();
    let mut out = String::new();
    std::io::Read::read_to_string(c.proc.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        status.success(),
        "prescale run failed ({status}):\n{}",
        c.log[c.log.len().saturating_sub(40)..].join("\n")
    );
    run_report(&out)
}

/// What the input topics hold against the events `prescale produce` sent:
/// (records missing, extra copies, records out of their source order
/// within a partition). Every message is read back and matched by its
/// bytes, so the broker's part is told apart from the service's.
fn input_diff(
    cfg: &prescale::io::kafka::config::KafkaConfig,
    events: &[Event],
) -> (usize, usize, usize) {
    use prescale::events::avro::EventKind;
    use std::collections::BTreeMap;
    // Source: per (topic, key), the framed payloads in the order sent.
    let mut want: BTreeMap<(String, String), Vec<Vec<u8>>> = BTreeMap::new();
    for m in messages(events) {
        let topic = cfg.topics.configured(&m.topic).unwrap().to_string();
        let payload = match EventKind::from_default_topic(&m.topic) {
            Ok(k) => prescale::io::kafka::codec::frame_input(cfg, k, m.payload),
            Err(_) => m.payload,
        };
        want.entry((topic, m.key)).or_default().push(payload);
    }
    let consumer: BaseConsumer = prescale::io::kafka::client::consumer_config(cfg, None)
        .create()
        .unwrap();
    let topics: BTreeSet<String> = want.keys().map(|(t, _)| t.clone()).collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut next = std::collections::BTreeMap::new();
    for t in &topics {
        for p in prescale::io::kafka::client::partitions_of(
            consumer.client(),
            t,
            Duration::from_secs(10),
        )
        .unwrap()
        {
            tpl.add_partition_offset(t, p, rdkafka::Offset::Beginning)
                .unwrap();
            next.insert((t.clone(), p), None);
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut got: BTreeMap<(String, String), Vec<Vec<u8>>> = BTreeMap::new();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "reading input timed out"
        );
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                next.insert((m.topic().to_string(), m.partition()), Some(m.offset() + 1));
                let key = String::from_utf8_lossy(m.key().unwrap_or(&[])).into_owned();
                got.entry((m.topic().to_string(), key))
                    .or_default()
                    .push(m.payload().unwrap_or(&[]).to_vec());
            }
            _ => {
                if started.elapsed() > Duration::from_millis(500)
                    && next.iter().all(|((t, p), n)| {
                        prescale::io::kafka::client::caught_up(consumer.client(), t, *p, *n)
                    })
                {
                    break;
                }
            }
        }
    }
    let (mut missing, mut extra, mut disorder) = (0, 0, 0);
    for (k, sent) in &want {
        let read = got.remove(k).unwrap_or_default();
        // Copies: a payload read more often than sent (equal events are
        // counted by multiplicity).
        let mut count: BTreeMap<&[u8], i64> = BTreeMap::new();
        for p in sent {
            *count.entry(p).or_default() += 1;
        }
        for p in &read {
            *count.entry(p).or_default() -= 1;
        }
        missing += count
            .values()
            .filter(|&&c| c > 0)
            .map(|&c| c as usize)
            .sum::<usize>();
        extra += count
            .values()
            .filter(|&&c| c < 0)
            .map(|&c| (-c) as usize)
            .sum::<usize>();
        // Order: first occurrences of the read records, against the sent order.
        let pos: BTreeMap<&[u8], usize> = sent
            .iter()
            .enumerate()
            .rev()
            .map(|(i, p)| (p.as_slice(), i))
            .collect();
        let mut seen = BTreeSet::new();
        let mut last = 0;
        for p in &read {
            if seen.insert(p.as_slice()) {
                if let Some(&i) = pos.get(p.as_slice()) {
                    if i < last {
                        disorder += 1;
                    }
                    last = last.max(i);
                }
            }
        }
    }
    extra += got.values().map(Vec::len).sum::<usize>();
    (missing, extra, disorder)
}

/// A broker outage under live traffic: `prescale produce --rate` feeds the
/// input while `prescale run` consumes it; the file-backed broker is stopped
/// mid-stream, kept down for 10 s (`PRESCALE_TEST_OUTAGE_S` to try others)
/// and started again while input keeps arriving. Producer and service ride
/// it out: the input topics hold every record in its order, every event is
/// applied, and the commands are exactly the backtest's, each id with one
/// content.
#[test]
fn broker_outage_under_live_traffic_loses_nothing_and_decides_nothing_twice() {
    let broker = Broker::file_backed();
    let bt = backtest_replay();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config(&broker, "outage", state.path());
    cfg.properties
        .insert("reconnect.backoff.max.ms".into(), "500".into());
    // Not idempotent: tansu 0.6.0's file storage panics when an idempotent
    // producer that was writing before the stop writes again after the
    // restart ("more or less than one row" in
    // `lite::Delegate::idempotent_message_check`), and the broker then fails
    // every request (`UnableToSend`) until it is restarted. Kafka keeps
    // producer state across restarts. Without idempotence a retried batch
    // may be written twice: the test then also checks that duplicated
    // input changes no decision.
    // (Without idempotence the publisher then keeps one request in flight,
    // which librdkafka's own retries need to keep a partition's order.)
    cfg.properties
        .insert("enable.idempotence".into(), "false".into());
    // Replay-identical merging needs a grace above the skew across
    // partitions (docs/service.md): here, as the consumer resumes fetching
    // every partition after the restart. 15 s keeps a wide margin under a
    // loaded suite; the default of the other live tests (300 ms) passed
    // every run alone (`PRESCALE_TEST_MERGE_IDLE_MS=300`; then the first
    // new command comes within milliseconds of the broker's return).
    cfg.merge_idle_ms = std::env::var("PRESCALE_TEST_MERGE_IDLE_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15_000);
    let args = cli_args(&cfg);
    create_topics(&cfg);
    let outage_s: u64 = std::env::var("PRESCALE_TEST_OUTAGE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // Its idle limit outlasts the outage: it must wait, not finish.
    let mut run = Child::spawn_idle(&args, "o", (outage_s + 20) * 1000, &[]);
    let started = Instant::now();
    while run.owned().map_or(0, |o| o.len()) != 9 {
        run.pump();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "prescale run did not join:\n{}",
            run.log.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Live input for the outage and 15 s more (stopping tansu takes ~5 s,
    // restarting ~1 s): the outage starts 3 s in, input keeps arriving
    // through it and after it. The producer's log (failed deliveries,
    // re-sends) is shown at the end.
    let input_s = (outage_s + 15) as f64;
    let produce_log = tempfile::NamedTempFile::new().unwrap();
    let mut producer = prescale()
        .arg("produce")
        .arg(&bt.events)
        .args(&args)
        .args(["--rate", &(bt.n_events as f64 / input_s).to_string()])
        .env("RUST_LOG", "info")
        .stderr(produce_log.reopen().unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let consumer: BaseConsumer = prescale::io::kafka::client::consumer_config(&cfg, None)
        .create()
        .unwrap();
    let before = command_messages(&cfg, &consumer);
    let stopping = Instant::now();
    broker.stop();
    let stopped = stopping.elapsed();
    std::thread::sleep(Duration::from_secs(outage_s));
    let starting = Instant::now();
    broker.start();
    let back = Instant::now();
    let restart = starting.elapsed();
    let back_ms = now_ms();
    // The first command published after the broker came back, and what the
    // run logged about its partitions and deliveries meanwhile.
    let mut first_after = None;
    let mut seen = run.log.len();
    let mut events = Vec::new();
    while back.elapsed() < Duration::from_secs(60) {
        run.pump();
        for l in &run.log[seen..] {
            if [
                "assigned",
                "revoked",
                "delivery failed",
                "re-sent",
                "replaced",
            ]
            .iter()
            .any(|k| l.contains(k))
            {
                // Timed by the line's own timestamp (RFC 3339, first field).
                let at = l
                    .split_whitespace()
                    .next()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| (t.timestamp_millis() - back_ms) as f64 / 1000.0);
                events.push(format!("{:+.2}s {}", at.unwrap_or(f64::NAN), l));
            }
        }
        seen = run.log.len();
        if command_messages(&cfg, &consumer) > before {
            first_after = Some(back.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "stopping tansu took {stopped:?}; down {outage_s} s; starting it {restart:?} (times below from its return); prescale run:\n{}",
        events.join("\n")
    );
    assert!(
        producer.wait().unwrap().success(),
        "prescale produce failed across the outage"
    );
    let produced = std::fs::read_to_string(produce_log.path()).unwrap_or_default();
    eprintln!(
        "prescale produce across the outage:\n{}",
        produced
            .lines()
            .filter(|l| ["WARN", "re-sent", "produced", "delivery attempts"]
                .iter()
                .any(|k| l.contains(k)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let report = finish(run, Duration::from_secs(240));
    assert_eq!(report["finished"], true, "{report}");
    assert_eq!(report["dead_letters"], 0, "{report}");
    // Every event the producer had accepted reached the engine (copies a
    // producer retry may add are at most extra deliveries, never fewer).
    assert!(
        report["events"].as_u64().unwrap() >= bt.n_events as u64,
        "{report}"
    );
    // The broker's part: every record the producer sent is in the input
    // topics, in its order per key (copies of a retried batch may be there).
    let events = read_events(&bt.events, false).unwrap().events;
    let (missing, copies, disorder) = input_diff(&cfg, &events);
    eprintln!(
        "input topics: {missing} records missing, {copies} extra copies, {disorder} out of order"
    );
    assert_eq!(
        (missing, disorder),
        (0, 0),
        "the input topics lost or reordered records"
    );
    let lines = tail_lines(&cfg);
    // One content per id (json_lines_by_id panics otherwise), the reference set.
    let got = json_lines_by_id(&lines);
    eprintln!(
        "outage {outage_s} s: {} command messages for {} ids; {before} before the outage; first command {first_after:?} after the broker came back; report {report}",
        lines.len(),
        got.len(),
    );
    assert_same_lines(&got, &bt.commands);
}

/// Recovery after SIGKILL, measured: `prescale run` (static membership) is
/// killed three times while live input flows and restarted at once; each
/// restart's time to its first published command and to its first snapshot
/// is printed (figures for docs/benchmarks.md, not asserted). The commands
/// in the end are exactly the backtest's, one content per id.
#[test]
fn sigkilled_run_recovers_each_time_and_reports_its_recovery_time() {
    let broker = Broker::shared();
    let bt = backtest_replay();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(broker, "recover", state.path());
    let args = cli_args(&cfg);
    create_topics(&cfg);
    let member = ["-X", "group.instance.id=recover"];
    let joined = |c: &mut Child, limit: Duration| {
        let t = Instant::now();
        while c.owned().map_or(0, |o| o.len()) != 9 {
            c.pump();
            assert!(t.elapsed() < limit, "no join:\n{}", c.log.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed()
    };
    let mut run = Child::spawn_idle(&args, "recover", 3000, &member);
    // Baseline: the first start's join (a fresh member, no snapshot).
    let first_join = joined(&mut run, Duration::from_secs(60));
    // ~40 s of live input: three kills 4 s after each (re)start has settled.
    let mut producer = prescale()
        .arg("produce")
        .arg(&bt.events)
        .args(&args)
        .args(["--rate", &(bt.n_events as f64 / 40.0).to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let consumer: BaseConsumer = prescale::io::kafka::client::consumer_config(&cfg, None)
        .create()
        .unwrap();
    let snapshot_after = |t: std::time::SystemTime| {
        snapshots(state.path()).iter().any(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m > t)
        })
    };
    let mut rows = Vec::new();
    for kill in 1..=3 {
        std::thread::sleep(Duration::from_secs(4));
        run.proc.kill().unwrap(); // SIGKILL
        run.proc.wait().unwrap();
        let before = command_messages(&cfg, &consumer);
        let wall = std::time::SystemTime::now();
        let t = Instant::now();
        run = Child::spawn_idle(&args, "recover", 3000, &member);
        let (mut join, mut command, mut snapshot) = (None, None, None);
        while t.elapsed() < Duration::from_secs(60)
            && (join.is_none() || command.is_none() || snapshot.is_none())
        {
            run.pump();
            if join.is_none() && run.owned().map_or(0, |o| o.len()) == 9 {
                join = Some(t.elapsed());
            }
            if command.is_none() && command_messages(&cfg, &consumer) > before {
                command = Some(t.elapsed());
            }
            if snapshot.is_none() && snapshot_after(wall) {
                snapshot = Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        assert!(
            join.is_some() && command.is_some(),
            "restart {kill}: join {join:?}, first command {command:?}:\n{}",
            run.log.join("\n")
        );
        rows.push((kill, secs(join), secs(command), secs(snapshot)));
    }
    assert!(
        producer.wait().unwrap().success(),
        "prescale produce failed"
    );
    let report = finish(run, Duration::from_secs(180));
    assert_eq!(report["finished"], true, "{report}");
    // The broker kept the input as sent (the consumer's kills touch only it).
    let events = read_events(&bt.events, false).unwrap().events;
    assert_eq!(input_diff(&cfg, &events), (0, 0, 0), "input topics");
    let lines = tail_lines(&cfg);
    assert_same_lines(&json_lines_by_id(&lines), &bt.commands);
    eprintln!(
        "first start → assigned: {:.2} s (baseline)",
        first_join.as_secs_f64()
    );
    eprintln!("kill | restart→assigned s | restart→first command s | restart→first snapshot s");
    for (k, j, c, s) in &rows {
        eprintln!("{k} | {j:.2} | {c:.2} | {s:.2}");
    }
}
