//! The `ferry` binary: everything lives in the library; see `cli`.

/// The benchmark build counts heap allocations; the others use the
/// system allocator as it is.
#[cfg(feature = "count-allocs")]
#[global_allocator]
static ALLOCATOR: ferry::alloc_count::Counting = ferry::alloc_count::Counting;

fn main() {
    std::process::exit(ferry::cli::main());
}

/// The only function ferry would load glibc's libm for (tokio's scheduler
/// uses `f64::powf` to average task poll times). Loading libm costs about
/// 0.5 MiB of resident memory on its own, mostly pages its loader
/// touches, for this one function; defining it here (the same musl
/// algorithm, in Rust) means libm is never loaded.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::pow;

    #[test]
    fn pow_is_the_usual_power() {
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(2.0, 0.5), std::f64::consts::SQRT_2);
        assert_eq!(pow(10.0, -3.0), 0.001);
        assert_eq!(pow(0.0, 0.0), 1.0);
        assert!(pow(-8.0, 1.0 / 3.0).is_nan());
        // tokio's use: the weight of past poll times after n polls.
        let w = pow(0.9, 61.0);
        assert!((w - 0.001_617_309_27).abs() < 1e-12, "{w}");
    }
}
