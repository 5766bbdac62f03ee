//! The property test of the pipeline's rules: random sequences of API calls and health-judge ticks
//! must never break the rollout invariants (one active rollout per channel, nobody told to run
//! a `known_bad` build, percentages only grow, runners leave a cancelled rollout). Proptest
//! replays the seeds saved in `proptest-regressions/pipeline/properties.txt`, a path it derives
//! from this file's.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use uuid::Uuid;

use super::model::*;
use super::*;
use crate::clock::Millis;

const BUILDS: usize = 4;
const ORGS: [&str; 3] = ["acme", "beta-org", "held"];

fn build_id(i: usize) -> String {
    format!("b{i}")
}

/// One API call (or a tick of the health judge) against the pipeline.
#[derive(Debug, Clone)]
enum Op {
    RegisterBuild(usize),
    SetStatus(usize, BuildStatus),
    CreateRollout {
        build: usize,
        beta: bool,
        start: bool,
        custom: bool,
    },
    Verb(usize, RolloutVerb),
    Judge {
        ended: u64,
        failed: u64,
        runners: u64,
        offline: u64,
        wait: i64,
        auto: bool,
    },
    PutConfig {
        org: usize,
        channel: Channel,
        build: usize,
        beta_opt_in: bool,
        auto_upgrade: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let status = prop_oneof![
        Just(BuildStatus::Testing),
        Just(BuildStatus::KnownGood),
        Just(BuildStatus::KnownBad),
        Just(BuildStatus::Deprecated),
    ];
    let verb = prop_oneof![
        Just(RolloutVerb::Advance),
        Just(RolloutVerb::Pause),
        Just(RolloutVerb::Resume),
        Just(RolloutVerb::Cancel),
    ];
    let channel = prop_oneof![
        Just(Channel::Stable),
        Just(Channel::Beta),
        Just(Channel::Pinned)
    ];
    prop_oneof![
        (0..BUILDS).prop_map(Op::RegisterBuild),
        (0..BUILDS, status).prop_map(|(b, s)| Op::SetStatus(b, s)),
        (0..BUILDS, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(build, beta, start, custom)| Op::CreateRollout {
                build,
                beta,
                start,
                custom
            }
        ),
        (0..8usize, verb.clone()).prop_map(|(r, v)| Op::Verb(r, v)),
        (0..8usize, verb).prop_map(|(r, v)| Op::Verb(r, v)),
        // Mostly healthy stages, so automation's advance path runs too.
        (
            0..30u64,
            prop_oneof![3 => Just(0u64), 1 => 0..30u64],
            0..5u64,
            prop_oneof![3 => Just(0u64), 1 => 0..5u64],
            0..120_000i64,
            any::<bool>()
        )
            .prop_map(|(ended, failed, runners, offline, wait, auto)| Op::Judge {
                ended,
                failed: failed.min(ended),
                runners,
                offline: offline.min(runners),
                wait,
                auto
            }),
        (
            0..ORGS.len(),
            channel,
            0..BUILDS,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(org, channel, build, beta_opt_in, auto_upgrade)| {
                Op::PutConfig {
                    org,
                    channel,
                    build,
                    beta_opt_in,
                    auto_upgrade,
                }
            }),
    ]
}

fn apply(s: &mut PipelineState, op: &Op, now: &mut Millis, seq: &mut u128) {
    let mut c = Changes::default();
    match op {
        Op::RegisterBuild(i) => {
            let _ = s.register_build(
                NewBuild {
                    build_id: build_id(*i),
                    runner_version: format!("1.{i}"),
                    built_at: *now,
                    runtime_versions: BTreeMap::new(),
                    metadata_json: None,
                },
                *now,
                &mut c,
            );
        }
        Op::SetStatus(i, st) => {
            let _ = s.set_build_status(&build_id(*i), *st, None, *now, &mut c);
        }
        Op::CreateRollout {
            build,
            beta,
            start,
            custom,
        } => {
            *seq += 1;
            let channel = if *beta {
                Channel::Beta
            } else {
                Channel::Stable
            };
            let stages = custom.then(|| vec![5, 100]);
            let _ = s.create_rollout(
                Uuid::from_u128(*seq),
                &build_id(*build),
                channel,
                stages,
                *start,
                "test",
                *now,
                &mut c,
            );
        }
        Op::Verb(i, verb) => {
            if let Some(id) = s.rollouts.keys().nth(*i).copied() {
                let _ = s.apply_verb(id, *verb, Some("why"), *now, &mut c);
            }
        }
        Op::Judge {
            ended,
            failed,
            runners,
            offline,
            wait,
            auto,
        } => {
            *now += wait;
            let counts: BTreeMap<(Uuid, usize), StageCounts> = s
                .rollouts
                .values()
                .filter_map(|r| r.stage_index.map(|st| (r.id, st)))
                .map(|k| {
                    (
                        k,
                        StageCounts {
                            new_ended: *ended,
                            new_failed: *failed,
                            previous_ended: *ended,
                            previous_failed: 0,
                        },
                    )
                })
                .collect();
            s.add_counts(&counts, &mut c);
            let rules = HealthRules {
                max_failure_rate: 0.1,
                min_sessions: 5,
                max_offline_rate: 0.15,
                hold_ms: 60_000,
                auto_advance: *auto,
            };
            let fleet = |_: &str, _: Millis| BuildFleet {
                runners: *runners,
                offline: *offline,
            };
            s.evaluate(&rules, &fleet, *now, &mut c);
        }
        Op::PutConfig {
            org,
            channel,
            build,
            beta_opt_in,
            auto_upgrade,
        } => {
            let _ = s.put_org_config(
                OrgRuntimeConfig {
                    org_id: ORGS[*org].to_owned(),
                    channel: *channel,
                    beta_opt_in: *beta_opt_in,
                    auto_upgrade: *auto_upgrade,
                    pinned_build_id: (*channel == Channel::Pinned).then(|| build_id(*build)),
                    updated_at: None,
                },
                *now,
                &mut c,
            );
        }
    }
    *now += 1;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_sequence_of_calls_breaks_the_rollout_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut s = PipelineState::default();
        let mut now: Millis = 1_000_000;
        let mut seq = 0u128;
        let runners: Vec<Uuid> = (0..64u128).map(|i| Uuid::from_u128(i * 7919 + 1)).collect();
        let mut percentages: BTreeMap<Uuid, u8> = BTreeMap::new();
        // Shared runners following each channel that hold a rollout's target, per rollout.
        let mut exposure: BTreeMap<Uuid, BTreeSet<Uuid>> = BTreeMap::new();
        for op in &ops {
            let was_active: BTreeSet<Uuid> =
                s.rollouts.values().filter(|r| r.is_active()).map(|r| r.id).collect();
            apply(&mut s, op, &mut now, &mut seq);

            // 4. While a rollout is active, the runners on its target only grow (nobody
            //    flips back); once cancelled or failed, every runner has left it.
            for r in s.rollouts.values() {
                let on_target: BTreeSet<Uuid> = runners
                    .iter()
                    .filter(|id| {
                        s.desired_build(None, **id, None, r.channel)
                            .is_some_and(|b| b.build_id == r.target_build_id)
                    })
                    .copied()
                    .collect();
                if r.is_active() {
                    // Those this rollout put there (beta runners may also follow stable's).
                    let mine: BTreeSet<Uuid> = on_target
                        .iter()
                        .filter(|id| runner_bucket(**id) < r.current_percentage)
                        .copied()
                        .collect();
                    let before = exposure.insert(r.id, mine.clone()).unwrap_or_default();
                    let on_target = mine;
                    prop_assert!(before.is_subset(&on_target), "runners left active rollout {} after {op:?}", r.id);
                } else if was_active.contains(&r.id)
                    && matches!(r.state, RolloutState::RolledBack | RolloutState::CanaryFailed)
                    // (unless another channel is still rolling the same build out)
                    && !s.rollouts.values().any(|o| o.is_active() && o.target_build_id == r.target_build_id)
                    // (or the channel already ran that build before: then it stays)
                    && s.current_build(r.channel) != Some(r.target_build_id.as_str())
                {
                    prop_assert!(on_target.is_empty(), "{} runners still on cancelled {} after {op:?}", on_target.len(), r.target_build_id);
                    // Stable runners are all back on the channel's build (beta ones may
                    // follow a stable rollout while beta has nothing of its own).
                    let back = s.current_build(r.channel).filter(|b| !s.is_known_bad(b));
                    for id in runners.iter().filter(|_| r.channel == Channel::Stable) {
                        let got = s.desired_build(None, *id, None, r.channel).map(|b| b.build_id.as_str());
                        prop_assert_eq!(got, back, "not back on the previous build after {:?}", op);
                    }
                }
            }

            // 1. At most one active rollout per channel, and the channel points at it.
            for channel in [Channel::Stable, Channel::Beta, Channel::Pinned] {
                let active: Vec<&Rollout> =
                    s.rollouts.values().filter(|r| r.channel == channel && r.is_active()).collect();
                prop_assert!(active.len() <= 1, "two active rollouts on {channel:?}: {op:?}");
                if let Some(r) = active.first() {
                    prop_assert_eq!(s.channels.get(&channel).and_then(|c| c.active_rollout), Some(r.id));
                }
            }
            prop_assert!(s.rollouts.values().all(|r| r.channel != Channel::Pinned));

            // 2. Nobody is told to run a known_bad build.
            for (i, runner) in runners.iter().enumerate() {
                for org in [None, Some(ORGS[i % 3])] {
                    for reported in [None, Some("b0"), Some("b1"), Some("b2")] {
                        for default in [Channel::Stable, Channel::Beta] {
                            if let Some(b) = s.desired_build(org, *runner, reported, default) {
                                prop_assert!(b.status != BuildStatus::KnownBad, "told to run {} after {op:?}", b.build_id);
                            }
                        }
                    }
                }
            }
            // No active rollout targets a known_bad build.
            prop_assert!(s.rollouts.values().filter(|r| r.is_active()).all(|r| !s.is_known_bad(&r.target_build_id)));

            // 3. Percentages never go down; exposure ends only by cancel/failure/completion.
            for r in s.rollouts.values() {
                let before = percentages.insert(r.id, r.current_percentage).unwrap_or(0);
                prop_assert!(r.current_percentage >= before, "{} went from {before} to {}", r.id, r.current_percentage);
                prop_assert!(r.stages.contains(&r.current_percentage) || r.current_percentage == 0);
                if r.state == RolloutState::Completed {
                    prop_assert_eq!(r.current_percentage, 100);
                }
                if r.state == RolloutState::Paused {
                    prop_assert!(r.paused_from.is_some_and(|p| !p.is_final() && p != RolloutState::Paused));
                }
            }
        }
    }
}

/// Three registered builds, `b0` to `b2`, for the unit tests next to the code.
pub(super) fn state_with_builds() -> (PipelineState, Changes) {
    let mut s = PipelineState::default();
    let mut c = Changes::default();
    for i in 0..3 {
        s.register_build(
            NewBuild {
                build_id: build_id(i),
                runner_version: "1".into(),
                built_at: 0,
                runtime_versions: BTreeMap::new(),
                metadata_json: None,
            },
            0,
            &mut c,
        )
        .unwrap();
    }
    (s, c)
}
