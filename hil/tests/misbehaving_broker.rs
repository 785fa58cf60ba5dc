//! The conformance monitor names the rule a broker breaks, and the correct
//! sim device is never blamed: the proxy makes the broker misbehave on the
//! wire (raise a delivered QoS, clear DUP on a re-delivery, deny a session
//! it kept) and each run must end `broker`, with the clause.

use hil::runner::{run_one, RunOptions, Verdict};
use hil::testbed::rules::BrokerFault;
use hil::testbed::BrokerChoice;
use hil_broker::MqttVersion;

fn broker_verdict(
    broker: BrokerChoice,
    mqtt: MqttVersion,
    scenario: &str,
    fault: BrokerFault,
    clause: &str,
) {
    let mut o = RunOptions::sim(env!("CARGO_BIN_EXE_hil").into(), broker);
    o.mqtt = mqtt;
    o.broker_faults = vec![fault];
    let s = hil::scenarios::find(scenario).unwrap();
    let r = run_one(&o, s, "24:0a:c4:00:60:07");
    match &r.verdict {
        Verdict::Broker { deviations, .. } => assert!(
            deviations.iter().any(|d| d.clause == clause),
            "{scenario} with {}: expected [{clause}], got {deviations:?}",
            fault.name()
        ),
        other => panic!(
            "{scenario} with {}: expected a broker verdict naming [{clause}], got {other:?}\n{}",
            fault.name(),
            r.transcript.raw()
        ),
    }
}

#[test]
fn a_raised_delivered_qos_is_the_brokers() {
    broker_verdict(
        BrokerChoice::Rumqttd,
        MqttVersion::V3_1_1,
        "queued_commands",
        BrokerFault::RaiseQos,
        "MQTT-3.8.4-6",
    );
}

#[test]
fn a_raised_delivered_qos_is_the_brokers_on_mqtt5() {
    broker_verdict(
        BrokerChoice::Rumqttd,
        MqttVersion::V5,
        "queued_commands",
        BrokerFault::RaiseQos,
        "MQTT-3.8.4-8",
    );
}

#[test]
fn a_denied_session_is_the_brokers() {
    broker_verdict(
        BrokerChoice::Rumqttd,
        MqttVersion::V3_1_1,
        "queued_commands",
        BrokerFault::DenySessionPresent,
        "MQTT-3.2.2-2",
    );
}

#[test]
fn a_denied_session_is_the_brokers_on_mqtt5_mosquitto() {
    broker_verdict(
        BrokerChoice::Mosquitto,
        MqttVersion::V5,
        "stable_client_id",
        BrokerFault::DenySessionPresent,
        "MQTT-3.2.2-3",
    );
}

#[test]
fn a_redelivery_without_dup_is_the_brokers_mosquitto() {
    broker_verdict(
        BrokerChoice::Mosquitto,
        MqttVersion::V3_1_1,
        "qos_lab",
        BrokerFault::ClearDup,
        "MQTT-3.3.1-1",
    );
}

#[test]
fn reordered_publishes_are_the_brokers() {
    broker_verdict(
        BrokerChoice::Rumqttd,
        MqttVersion::V3_1_1,
        "queued_commands",
        BrokerFault::ReorderPublishes,
        "MQTT-4.6.0-6",
    );
}

#[test]
fn reordered_publishes_are_the_brokers_on_mqtt5_mosquitto() {
    broker_verdict(
        BrokerChoice::Mosquitto,
        MqttVersion::V5,
        "queued_commands",
        BrokerFault::ReorderPublishes,
        "MQTT-4.6.0-6",
    );
}

#[test]
fn a_swallowed_will_is_the_brokers() {
    broker_verdict(
        BrokerChoice::Rumqttd,
        MqttVersion::V3_1_1,
        "last_will",
        BrokerFault::SwallowWill,
        "MQTT-3.1.2-8",
    );
}

#[test]
fn a_swallowed_will_is_the_brokers_on_mqtt5_mosquitto() {
    broker_verdict(
        BrokerChoice::Mosquitto,
        MqttVersion::V5,
        "last_will",
        BrokerFault::SwallowWill,
        "MQTT-3.1.2-8",
    );
}
