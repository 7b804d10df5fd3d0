//! The settlement rule (docs/protocol.md §9) over random markets and meter data: conservation
//! holds to the µ€, a producer is never credited beyond what it delivered, a device that
//! follows its schedule pays exactly Σ λ·x·Δ with no imbalance, and the bill is deterministic.

use std::collections::BTreeMap;

use circuits::fixed::SCALE;
use proptest::prelude::*;
use protocol::ids::DeviceId;
use protocol::settlement::{amount, settle, Market, SettlementSpec};

/// A random market: T slots of `slot_seconds`, prices within ±3,000 €/MWh, each device's
/// schedule within ±22 kW, and a reading (within ±25 kW) for some of its slots.
fn market() -> impl Strategy<Value = (u32, i64, Vec<i64>, Vec<(Vec<i32>, Vec<Option<i64>>)>)> {
    (1usize..=8, 1usize..=6).prop_flat_map(|(t, n)| {
        (
            prop_oneof![Just(60u32), Just(900), Just(3600)],
            0i64..=200 * SCALE,
            proptest::collection::vec(-3000 * SCALE..=3000 * SCALE, t),
            proptest::collection::vec((proptest::collection::vec(-22_000i32..=22_000, t), proptest::collection::vec(proptest::option::of(-25_000i64..=25_000), t)), n),
        )
    })
}

fn inputs(devices: &[(Vec<i32>, Vec<Option<i64>>)]) -> (BTreeMap<DeviceId, Vec<i32>>, BTreeMap<(DeviceId, u32), i64>) {
    let mut schedules = BTreeMap::new();
    let mut readings = BTreeMap::new();
    for (i, (x, m)) in devices.iter().enumerate() {
        let d = DeviceId([i as u8 + 1; 32]);
        schedules.insert(d, x.clone());
        for (t, r) in m.iter().enumerate() {
            if let Some(e) = r {
                readings.insert((d, t as u32), *e);
            }
        }
    }
    (schedules, readings)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn conservation_escrow_and_followers_hold_on_random_markets((slot_seconds, premium, prices, devices) in market()) {
        let rule = SettlementSpec { meter_window_ms: 1000, imbalance_premium: premium };
        let (schedules, readings) = inputs(&devices);
        let m = Market { slot_seconds, rule: &rule, prices: &prices, schedules: &schedules, readings: &readings };
        let s = settle(1, m).unwrap();
        prop_assert_eq!(&settle(1, m).unwrap(), &s, "deterministic");
        let t = s.totals;
        prop_assert_eq!(t.consumers_pay, t.producers_receive + t.imbalance_revenue + t.network_revenue, "conservation to the µ€");
        prop_assert_eq!(t.imbalance_revenue, s.bills.iter().map(|b| b.imbalance as i128).sum::<i128>());
        prop_assert_eq!(s.bills.len(), schedules.len());
        for b in &s.bills {
            prop_assert!(b.imbalance >= 0);
            let x = &schedules[&b.device];
            let metered = |slot: usize| readings.get(&(b.device, slot as u32)).copied();
            prop_assert_eq!(b.metered_slots as usize, (0..x.len()).filter(|&slot| metered(slot).is_some()).count());
            // Escrow: the credit for production is at most what the delivered energy is
            // worth, slot by slot (a missing reading delivers nothing).
            let delivered_worth: i64 = (0..x.len()).map(|slot| {
                let d = (-metered(slot).unwrap_or(0)).max(0).min((-(x[slot] as i64)).max(0));
                amount(prices[slot], d, slot_seconds).unwrap()
            }).sum();
            let owed_for_consumption: i64 = (0..x.len()).map(|slot| amount(prices[slot], (x[slot] as i64).max(0), slot_seconds).unwrap()).sum();
            prop_assert_eq!(b.energy, owed_for_consumption - delivered_worth);
        }
        // The same market with every device following its schedule: each pays exactly
        // Σ λ·x·Δ, with no imbalance.
        let followed: BTreeMap<(DeviceId, u32), i64> =
            schedules.iter().flat_map(|(d, x)| x.iter().enumerate().map(move |(slot, &w)| ((*d, slot as u32), w as i64))).collect();
        let f = settle(1, Market { readings: &followed, ..m }).unwrap();
        for b in &f.bills {
            let x = &schedules[&b.device];
            let exact: i64 = (0..x.len()).map(|slot| amount(prices[slot], x[slot] as i64, slot_seconds).unwrap()).sum();
            prop_assert_eq!((b.energy, b.imbalance), (exact, 0));
        }
    }

    #[test]
    fn a_producer_that_delivers_nothing_is_never_credited(
        (slot_seconds, premium, prices, devices) in market(),
    ) {
        // Every device produces per schedule but its meter shows no delivery (or is missing):
        // at non-negative prices it receives nothing and pays the imbalance.
        let prices: Vec<i64> = prices.iter().map(|p| p.abs()).collect();
        let devices: Vec<(Vec<i32>, Vec<Option<i64>>)> =
            devices.into_iter().map(|(x, m)| (x.iter().map(|w| -w.abs()).collect(), m.iter().map(|r| r.map(|e| e.abs())).collect())).collect();
        let rule = SettlementSpec { meter_window_ms: 1000, imbalance_premium: premium };
        let (schedules, readings) = inputs(&devices);
        let s = settle(1, Market { slot_seconds, rule: &rule, prices: &prices, schedules: &schedules, readings: &readings }).unwrap();
        for b in &s.bills {
            prop_assert_eq!(b.energy, 0, "no credit without delivery");
            prop_assert!(b.total() >= 0);
        }
        prop_assert_eq!(s.totals.producers_receive, 0);
    }
}

#[test]
fn an_amount_is_price_times_energy_times_duration_in_micro_euro() {
    // 1 kW for an hour at 100 €/MWh is 0.1 € = 100,000 µ€; a 15-minute slot a quarter of it.
    assert_eq!(amount(100 * SCALE, 1000, 3600), Some(100_000));
    assert_eq!(amount(100 * SCALE, 1000, 900), Some(25_000));
    assert_eq!(amount(-100 * SCALE, 1000, 900), Some(-25_000));
    // Half a µ€ rounds to even.
    assert_eq!(amount(SCALE / 2, 1, 3600), Some(0));
    assert_eq!(amount(3 * SCALE / 2, 1, 3600), Some(2));
    assert_eq!(amount(i64::MAX, i64::MAX, 3600), None);
}

#[test]
fn extreme_readings_and_prices_saturate_instead_of_failing_or_panicking() {
    use protocol::settlement::slot_bill;
    // A production reading of i64::MIN: the delivery is capped by the schedule (5 W); the
    // imbalance, |i64::MIN + 5| W·slot at 1 €/MWh over a quarter hour, is computed in i128.
    let line = slot_bill(-5, Some(i64::MIN), SCALE, 0, 900);
    assert_eq!((line.billed_w, line.imbalance), (-5, 2_305_843_009_213_693_951));
    let line = slot_bill(-5, Some(i64::MIN), i64::MAX, i64::MAX, 3600);
    assert_eq!(line.imbalance, i64::MAX, "beyond i64: saturated");
    let line = slot_bill(5, Some(i64::MAX), i64::MAX, 0, 900);
    assert_eq!((line.energy, line.imbalance), (amount(i64::MAX, 5, 900).unwrap(), i64::MAX));
    let line = slot_bill(-5, Some(-5), i64::MIN, 0, u32::MAX);
    assert_eq!(line.energy, i64::MAX, "a credit at the most negative price is a saturated charge");
    // A market of such bills still settles, with exact i128 totals.
    let rule = SettlementSpec { meter_window_ms: 1, imbalance_premium: 0 };
    let schedules: BTreeMap<DeviceId, Vec<i32>> = (1..=3u8).map(|i| (DeviceId([i; 32]), vec![5])).collect();
    let readings: BTreeMap<(DeviceId, u32), i64> = schedules.keys().map(|d| ((*d, 0), i64::MAX)).collect();
    let s = settle(1, Market { slot_seconds: 900, rule: &rule, prices: &[i64::MAX], schedules: &schedules, readings: &readings }).unwrap();
    assert_eq!(s.totals.imbalance_revenue, 3 * i64::MAX as i128);
}
