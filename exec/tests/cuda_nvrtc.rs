//! CI gate for the CUDA kernels: every `kernels/*.cu` source compiles with NVRTC for sm_80 and
//! sm_90, and the PTX defines every entry point the launch wrappers load. Needs no GPU: NVRTC
//! and the CUDA headers come from the pip wheels that `kernels/ci-setup.sh` installs (it exports
//! LD_LIBRARY_PATH and DOPPEL_CUDA_INCLUDE). Without them the test prints why and returns, unless
//! DOPPEL_REQUIRE_NVRTC=1 (set by ci-setup.sh once the wheels are in place), which makes a
//! missing NVRTC a failure.

use doppel_exec::cuda::compile::{
    cache_key, cached_ptx_all, compile_ptx, find_include_dir, nvrtc_version,
};
use doppel_exec::cuda::KERNEL_SOURCES;

fn required() -> bool {
    std::env::var("DOPPEL_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    let ver = match nvrtc_version() {
        Ok(v) => v,
        Err(e) if !required() => {
            eprintln!("skipping NVRTC compile test: {e}");
            return;
        }
        Err(e) => panic!("DOPPEL_REQUIRE_NVRTC=1 but {e}"),
    };
    let include = match find_include_dir() {
        Ok(d) => d,
        Err(e) if !required() => {
            eprintln!("skipping NVRTC compile test: {e}");
            return;
        }
        Err(e) => panic!("DOPPEL_REQUIRE_NVRTC=1 but {e}"),
    };
    eprintln!(
        "NVRTC {}.{}, headers from {}",
        ver.0,
        ver.1,
        include.display()
    );
    let mut failures = Vec::new();
    let mut compiled = 0;
    for k in KERNEL_SOURCES {
        for cc in [80u32, 90] {
            match compile_ptx(k.file, k.src, cc, &include) {
                Ok(ptx) => {
                    compiled += 1;
                    // For inspecting the generated code (local memory, mma instructions).
                    if let Some(dir) = std::env::var_os("DOPPEL_DUMP_PTX") {
                        let path =
                            std::path::Path::new(&dir).join(format!("{}.sm{cc}.ptx", k.file));
                        std::fs::write(&path, &ptx)
                            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                    }
                    for e in k.entries {
                        if !ptx.contains(&format!(".entry {e}(")) {
                            failures
                                .push(format!("{} (sm_{cc}): PTX lacks entry point {e}", k.file));
                        }
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("{compiled} kernel modules compiled");
    assert_eq!(compiled, 2 * KERNEL_SOURCES.len());
}

/// The start-up path: every source compiled on parallel threads into an empty cache gives the
/// same PTX as compiling it alone, is stored under its cache key, and a second start-up reads
/// every source back from the cache.
#[test]
fn parallel_compile_matches_serial_and_fills_the_cache() {
    let (ver, include) = match (nvrtc_version(), find_include_dir()) {
        (Ok(v), Ok(i)) => (v, i),
        (Err(e), _) | (_, Err(e)) if !required() => {
            eprintln!("skipping parallel NVRTC test: {e}");
            return;
        }
        (Err(e), _) | (_, Err(e)) => panic!("DOPPEL_REQUIRE_NVRTC=1 but {e}"),
    };
    let dir = std::env::temp_dir().join(format!("doppel-nvrtc-par-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t0 = std::time::Instant::now();
    let first = cached_ptx_all(KERNEL_SOURCES, 90, &dir).expect("parallel compile");
    let parallel_s = t0.elapsed().as_secs_f64();
    assert_eq!(first.len(), KERNEL_SOURCES.len());
    let t1 = std::time::Instant::now();
    for (k, (ptx, hit)) in KERNEL_SOURCES.iter().zip(&first) {
        assert!(!hit, "{}: the cache was empty", k.file);
        let alone = compile_ptx(k.file, k.src, 90, &include).expect("serial compile");
        assert_eq!(
            ptx.to_src(),
            alone,
            "{}: parallel and serial PTX differ",
            k.file
        );
        assert!(
            dir.join(cache_key(k, 90, ver)).is_file(),
            "{}: not cached",
            k.file
        );
    }
    let serial_s = t1.elapsed().as_secs_f64();
    let again = cached_ptx_all(KERNEL_SOURCES, 90, &dir).expect("cached start-up");
    for (k, ((a, hit), (b, _))) in KERNEL_SOURCES.iter().zip(again.iter().zip(&first)) {
        assert!(hit, "{}: not read from the cache", k.file);
        assert_eq!(a.to_src(), b.to_src(), "{}: cached PTX differs", k.file);
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{} sources for sm_90: {parallel_s:.1} s on {} threads, {serial_s:.1} s one by one",
        KERNEL_SOURCES.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
