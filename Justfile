# esp-mqtt-hil: the commands a bench rig and a developer use.
# `just` is not in Debian 12: cargo install just --locked

set shell := ["bash", "-euo", "pipefail", "-c"]

elf := "firmware/target/riscv32imc-unknown-none-elf/release/hil-firmware"

# List the recipes.
default:
    @just --list

# Bench run: flash the rig's board and run every scenario on it.
# Example: HIL_WIFI_SSID=lab HIL_WIFI_PASS=... just hil fixtures/rigs/example.toml c3-a
hil rig="fixtures/rigs/example.toml" board="" *args="": firmware
    cargo run --release -p hil -- run --dut serial --rig {{rig}} {{ if board != "" { "--board " + board } else { "" } }} --elf {{elf}} --junit target/hil/junit.xml {{args}}

# Host tests: sim device, embedded rumqttd (add `--profile ci` for mosquitto too).
test *args="":
    cargo nextest run --workspace {{args}}

# The main job on the host: every scenario on the sim device.
sim *args="":
    cargo run -p hil -- run {{args}}

# Build the ESP32-C3 firmware and print its app image size (bytes, last line).
firmware:
    cd firmware && cargo build --release
    cargo run -q -p hil -- firmware image {{elf}} -o target/hil-firmware.bin --max-bytes 716800

# Flash the firmware and open the console (espflash CLI, for a person at the bench).
flash port="": firmware
    espflash flash --chip esp32c3 --monitor {{ if port != "" { "--port " + port } else { "" } }} {{elf}}

# Run the firmware on Wokwi (needs wokwi-cli and WOKWI_CLI_TOKEN).
wokwi *args="": firmware
    cargo run -p hil -- run --dut wokwi --wokwi-project fixtures/wokwi {{args}}

# Review changed transcript snapshots.
review:
    cargo insta review

# Check this host and a rig file: ports, probes, boards, broker address, Wi-Fi.
doctor rig="":
    cargo run -q -p hil -- doctor {{ if rig != "" { "--rig " + rig } else { "" } }}

# Benchmarks: the full scenario suite on both brokers, side by side.
bench:
    cargo run --release -p hil -- run --broker rumqttd --out target/hil/bench-rumqttd
    cargo run --release -p hil -- run --broker mosquitto --out target/hil/bench-mosquitto

# The fleet tables of the README: 1,000 and 10,000 session cores in one
# process, each broker, with and without jitter, the broker killed while the
# fleet is away. JSON reports in target/hil/fleet (merge them with `hil fleet merge`).
fleet:
    mkdir -p target/hil/fleet
    for n in 1000 10000; do for b in rumqttd mosquitto; do for j in "" "--no-jitter"; do \
      cargo run -q -p hil -- fleet --devices $n --restart --broker $b $j --json target/hil/fleet/$n-$b${j:+-nj}.json; \
    done; done; done
