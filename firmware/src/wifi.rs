//! The Wi-Fi task: owns the radio. On request it creates the controller,
//! associates and reports the link; on `!wifi off` it drops the controller,
//! which deinitialises the radio.

use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer};
use esp_radio::wifi::{sta::StationConfig, AuthenticationMethodConfig, Config, WifiController};
use hil_firmware_app::settings::WifiCreds;

static WANT: Signal<CriticalSectionRawMutex, bool> = Signal::new();
static STATE: Signal<CriticalSectionRawMutex, bool> = Signal::new();
static CREDS: Mutex<CriticalSectionRawMutex, Option<WifiCreds>> = Mutex::new(None);

pub fn request(on: bool) {
    WANT.signal(on);
}

pub fn set_credentials(c: Option<WifiCreds>) {
    if let Ok(mut g) = CREDS.try_lock() {
        *g = c;
    }
}

/// Resolves when the link goes up (true) or down (false).
pub async fn state_changed() -> bool {
    STATE.wait().await
}

fn station_config(c: &WifiCreds) -> Option<Config> {
    let ssid = c.ssid.as_str().try_into().ok()?;
    let auth = if c.pass.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(c.pass.as_str().try_into().ok()?)
    };
    Some(Config::Station(
        StationConfig::default()
            .with_ssid(ssid)
            .with_authentication(auth),
    ))
}

#[embassy_executor::task]
pub async fn wifi_task(mut wifi: esp_hal::peripherals::WIFI<'static>) {
    let mut want = WANT.wait().await;
    loop {
        if !want {
            want = WANT.wait().await;
            continue;
        }
        let creds = CREDS.lock().await.clone();
        let Some(conf) = creds.as_ref().and_then(station_config) else {
            want = WANT.wait().await;
            continue;
        };
        let Ok(mut ctrl) = WifiController::new(wifi.reborrow(), Default::default()) else {
            Timer::after(Duration::from_secs(2)).await;
            continue;
        };
        if ctrl.set_config(&conf).is_err() {
            want = WANT.wait().await;
            continue;
        }
        match select(ctrl.connect_async(), WANT.wait()).await {
            Either::First(Ok(_)) => {
                STATE.signal(true);
                match select(ctrl.wait_for_disconnect_async(), WANT.wait()).await {
                    Either::First(_) => {
                        STATE.signal(false);
                        Timer::after(Duration::from_secs(1)).await;
                    }
                    Either::Second(on) => {
                        want = on;
                        STATE.signal(false);
                    }
                }
            }
            Either::First(Err(_)) => Timer::after(Duration::from_secs(2)).await,
            Either::Second(on) => want = on,
        }
        // Dropping the controller stops and deinitialises the radio.
        drop(ctrl);
    }
}
