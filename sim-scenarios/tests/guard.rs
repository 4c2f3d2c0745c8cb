//! Guards the simulation build: `cargo simtest` sets `EXPECT_MADSIM=1` and passes
//! `--cfg madsim` through its config; an exported `RUSTFLAGS` silently replaces that
//! config, and the "simulations" would then run on the real runtime. This test fails
//! loudly when that happens.

#[test]
fn the_simulation_cfg_reached_the_build_when_expected() {
    let expected = option_env!("EXPECT_MADSIM").is_some() || std::env::var_os("EXPECT_MADSIM").is_some();
    let simulated = cfg!(madsim);
    if expected {
        assert!(
            simulated,
            "EXPECT_MADSIM is set but this test was built without --cfg madsim: is RUSTFLAGS exported? \
             Unset it and run `cargo simtest` again."
        );
    }
}

/// The simulator runs: virtual time advances without real waiting, and a seeded run is
/// reproducible.
#[cfg(madsim)]
#[madsim::test]
async fn virtual_time_advances_without_waiting() {
    let start = madsim::time::Instant::now();
    madsim::time::sleep(std::time::Duration::from_secs(3600)).await;
    assert!(start.elapsed() >= std::time::Duration::from_secs(3600));
}
