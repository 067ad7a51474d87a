//! Composing an enrichment operator into the dataflow, on several workers.
//!
//! Events are read from memory, enriched with a `region` attribute derived from `country`
//! (a stand-in for a geo-IP or user-profile lookup), sessionized, and each session's final
//! snapshot is printed.
//!
//! ```sh
//! cargo run --release --example enrich -- 2      # 2 worker threads
//! ```

use std::sync::Arc;

use sessionflow_operators::event::AttrValue;
use sessionflow_operators::record::Sourced;
use sessionflow_operators::session::{SessionConfig, Sessionize};
use sessionflow_operators::source::memory::MemoryReader;
use sessionflow_operators::source::{partitioned_source, SourceConfig};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Inspect, Probe};

/// The enrichment: a pure function on one event, so it runs before the exchange, on the
/// worker that read the event.
fn add_region(mut rec: Sourced) -> Sourced {
    let attrs = rec.event.attributes.get_or_insert_with(Vec::new);
    let country = attrs.iter().find(|(k, _)| k == "country").map(|(_, v)| v.clone());
    let region = match country {
        Some(AttrValue::Str(c)) if ["DE", "FR", "GB", "ES", "IT"].contains(&c.as_str()) => "emea",
        Some(AttrValue::Str(c)) if ["US", "CA", "BR", "MX"].contains(&c.as_str()) => "americas",
        Some(_) => "apac",
        None => "unknown",
    };
    if let Err(pos) = attrs.binary_search_by(|(k, _)| k.as_str().cmp("region")) {
        attrs.insert(pos, ("region".into(), AttrValue::Str(region.into())));
    }
    rec
}

fn main() {
    let workers: usize = std::env::args().nth(1).and_then(|w| w.parse().ok()).unwrap_or(2);
    let line = |p: u32, i: u32, country: &str| {
        format!(
            r#"{{"event_id":"e{p}-{i}","session_id":"s{p}-{}","visitor_id":"v{p}","project_id":1,"timestamp":{},"type":"pageview","attributes":{{"country":"{country}"}}}}"#,
            i / 3,
            1_700_000_000_000u64 + u64::from(i) * 20_000
        )
        .into_bytes()
    };
    let countries = ["US", "DE", "JP", "BR"];
    let lines: Vec<Vec<Vec<u8>>> = (0..4u32)
        .map(|p| (0..9u32).map(|i| line(p, i, countries[(p + i) as usize % 4])).collect())
        .collect();
    let lines = Arc::new(lines);

    let config = timely::Config::process(workers.max(1));
    let done = timely::execute(config, move |worker| {
        let reader = MemoryReader::new(Arc::clone(&lines), worker.index(), worker.peers());
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let input = partitioned_source(scope, "Events", SourceConfig::default(), reader, None, None);
            input
                .events
                .map(add_region)
                .sessionize(SessionConfig::default())
                .snapshots
                .inspect(|s| {
                    if s.closed {
                        println!("{}", s.json);
                    }
                })
                .probe()
                .0
        });
        while !probe.done() {
            worker.step();
        }
    });
    if let Err(e) = done {
        eprintln!("enrich: {e}");
        std::process::exit(1);
    }
}
