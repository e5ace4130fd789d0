"""One construct per capability: data, runtime (layers and code), API, jobs, monitoring."""
