"""A node-exporter-shaped metrics workload, served two ways: pushed as OTLP/HTTP and scraped as text.

    python bench/node_workload.py [--nodes 10] [--interval 1] [--port 0] [--otlp-url http://127.0.0.1:4318]

Why a generator and not a real node-exporter: the remote-write benchmark compares push senders (Headwater,
fed OTLP) with scrape senders (Prometheus agent mode, vmagent), and the comparison only means something if
every sender ships the SAME series with the SAME values. One process holds the state of `--nodes` nodes
(~510 series each, like node-exporter 1.5 on a small VM plus an application's metrics) and every
`--interval` seconds advances it the way a real node's values move: CPU, disk and network counters grow by
varying amounts, error counters rarely or never, many gauges (sizes, limits, info series) stay constant for
long stretches, a few (free memory, load, temperatures) change on every tick. Values come from a seeded RNG,
so every run produces the same sequence.

The same state is:
- POSTed to `--otlp-url`/v1/metrics every tick as one OTLP/HTTP protobuf request, one resource per node
  (`service.name=node-exporter`, `service.instance.id=<node>`), counters as monotonic cumulative sums,
  gauges as gauges, every other label as a data point attribute. Headwater turns that into
  `job="node-exporter", instance="<node>"` plus the attributes: the label sets the scrape path produces.
- served as Prometheus text exposition at `/metrics/<node>` (one node) and `/metrics` (all nodes), with
  `job` and `instance` written into every line, so a scraper with `honor_labels: true` stores the same label
  sets. The labels a real setup adds as target or external labels (cluster, region, availability_zone, env)
  are written on every series in both paths, which gives the ~8-12 labels per series of a production node.

Metric names carry their Prometheus suffixes already (`_total`, `_bytes`, `_seconds`) and OTLP units are left
empty, so the OTLP-to-Prometheus naming rules change nothing.

It prints `{"port": N}` on stdout once it listens. `GET /stats` answers JSON counters (ticks, OTLP requests
and samples accepted, scrapes and samples served, per path); `POST /stop` stops the OTLP pushes (scrapes go
on) so a benchmark can let a sender drain before it compares totals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Metric,
    NumberDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

JOB = "node-exporter"
MAX_PUSHES_IN_FLIGHT = 4
"""Past this many unanswered pushes a tick's push is skipped (counted in `otlp_skipped`), not queued."""
COMMON = (("cluster", "bench-eu-1"), ("env", "production"), ("region", "eu-west"))
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")


@dataclass(slots=True)
class Series:
    """One series of one node and how its value moves per tick.

    kind: `const` never changes; `step` changes with probability `p` by up to `scale` (relative);
    `noisy` changes every tick by up to `scale` (relative) around `base`; `time` is the tick's wall time;
    `rate` (counter) grows every tick by `scale` x a random factor in [0.2, 1.8], rounded to `quantum`;
    `sparse` (counter) grows by 1..`scale` with probability `p`; `zero` (counter) stays 0.
    """

    name: str
    counter: bool
    labels: tuple[tuple[str, str], ...]  # without job/instance, sorted by name
    kind: str
    base: float
    scale: float = 0.0
    p: float = 0.0
    quantum: float = 1.0
    value: float = 0.0


def _family(out: list[Series], metric: str, counter: bool, kind: str, base: float, scale: float = 0.0,
            p: float = 0.0, quantum: float = 1.0, **labels: str) -> None:
    out.append(Series(metric, counter, tuple(sorted(labels.items())), kind, base, scale, p, quantum, base))


def node_series(rng: random.Random) -> list[Series]:
    """The ~510 series of one node (labels without job/instance and the common ones)."""
    s: list[Series] = []
    modes = {"idle": 0.75, "iowait": 0.01, "irq": 0.0, "nice": 0.0, "softirq": 0.004, "steal": 0.0,
             "system": 0.04, "user": 0.12}
    for cpu in range(4):
        for mode, share in modes.items():
            kind = "rate" if share else "zero"
            _family(s, "node_cpu_seconds_total", True, kind, rng.uniform(1e4, 1e5) * max(share, 0.0), share,
                    quantum=0.01, cpu=str(cpu), mode=mode)
        for mode in ("nice", "user"):
            _family(s, "node_cpu_guest_seconds_total", True, "zero", 0.0, cpu=str(cpu), mode=mode)
        _family(s, "node_cpu_scaling_frequency_hertz", False, "step", 2.4e9, 0.3, p=0.2, quantum=1e6, cpu=str(cpu))
        _family(s, "node_cpu_scaling_frequency_max_hertz", False, "const", 3.5e9, cpu=str(cpu))
        _family(s, "node_cpu_scaling_frequency_min_hertz", False, "const", 8e8, cpu=str(cpu))
    total = 16 * 2**30
    memory = {  # name: (kind, share of total, relative scale, probability)
        "MemTotal": ("const", 1.0, 0, 0), "MemFree": ("noisy", 0.21, 0.02, 0), "MemAvailable": ("noisy", 0.55, 0.01, 0),
        "Buffers": ("step", 0.02, 0.01, 0.1), "Cached": ("step", 0.31, 0.005, 0.3), "SwapCached": ("const", 0.0, 0, 0),
        "Active": ("noisy", 0.35, 0.005, 0), "Inactive": ("step", 0.28, 0.005, 0.3),
        "Active_anon": ("noisy", 0.2, 0.005, 0), "Inactive_anon": ("step", 0.05, 0.01, 0.1),
        "Active_file": ("step", 0.15, 0.005, 0.3), "Inactive_file": ("step", 0.23, 0.005, 0.3),
        "Unevictable": ("const", 0.001, 0, 0), "Mlocked": ("const", 0.001, 0, 0), "SwapTotal": ("const", 0.25, 0, 0),
        "SwapFree": ("const", 0.25, 0, 0), "Dirty": ("noisy", 0.0002, 0.5, 0), "Writeback": ("step", 0.0, 0, 0.0),
        "AnonPages": ("noisy", 0.24, 0.005, 0), "Mapped": ("step", 0.04, 0.01, 0.1), "Shmem": ("step", 0.01, 0.01, 0.05),
        "KReclaimable": ("step", 0.03, 0.01, 0.1), "Slab": ("step", 0.05, 0.01, 0.2),
        "SReclaimable": ("step", 0.03, 0.01, 0.2), "SUnreclaim": ("step", 0.02, 0.01, 0.2),
        "KernelStack": ("step", 0.001, 0.02, 0.1), "PageTables": ("step", 0.003, 0.02, 0.1),
        "NFS_Unstable": ("const", 0.0, 0, 0), "Bounce": ("const", 0.0, 0, 0), "WritebackTmp": ("const", 0.0, 0, 0),
        "CommitLimit": ("const", 0.75, 0, 0), "Committed_AS": ("step", 0.6, 0.01, 0.2),
        "VmallocTotal": ("const", 2000.0, 0, 0), "VmallocUsed": ("step", 0.003, 0.01, 0.05),
        "VmallocChunk": ("const", 0.0, 0, 0), "Percpu": ("const", 0.0005, 0, 0),
        "HardwareCorrupted": ("const", 0.0, 0, 0), "AnonHugePages": ("step", 0.01, 0.05, 0.02),
        "ShmemHugePages": ("const", 0.0, 0, 0), "HugePages_Total": ("const", 0.0, 0, 0),
        "Hugepagesize": ("const", 2**21 / total, 0, 0), "DirectMap4k": ("const", 0.02, 0, 0),
        "DirectMap2M": ("const", 0.6, 0, 0), "DirectMap1G": ("const", 0.4, 0, 0),
    }
    for name, (kind, share, scale, p) in memory.items():
        _family(s, f"node_memory_{name}_bytes", False, kind, float(int(total * share) // 4096 * 4096), scale, p,
                quantum=4096.0)
    disk = {  # metric: (kind, per-tick mean, probability, quantum)
        "reads_completed_total": ("rate", 12, 0, 1), "reads_merged_total": ("rate", 2, 0, 1),
        "read_bytes_total": ("rate", 250_000, 0, 512), "read_time_seconds_total": ("rate", 0.004, 0, 0.001),
        "writes_completed_total": ("rate", 40, 0, 1), "writes_merged_total": ("rate", 15, 0, 1),
        "written_bytes_total": ("rate", 900_000, 0, 512), "write_time_seconds_total": ("rate", 0.02, 0, 0.001),
        "io_time_seconds_total": ("rate", 0.015, 0, 0.001), "io_time_weighted_seconds_total": ("rate", 0.03, 0, 0.001),
        "discards_completed_total": ("sparse", 3, 0.02, 1), "discards_merged_total": ("zero", 0, 0, 1),
        "discarded_sectors_total": ("sparse", 2048, 0.02, 1), "discard_time_seconds_total": ("sparse", 1, 0.02, 0.001),
        "flush_requests_total": ("rate", 4, 0, 1), "flush_requests_time_seconds_total": ("rate", 0.002, 0, 0.001),
    }
    for device in ("nvme0n1", "sda"):
        for metric, (kind, mean, p, quantum) in disk.items():
            _family(s, f"node_disk_{metric}", True, kind, rng.uniform(1e5, 1e7) * mean if kind != "zero" else 0.0,
                    mean, p, quantum, device=device)
        _family(s, "node_disk_io_now", False, "step", 0.0, 1.0, p=0.1, device=device)
        _family(s, "node_disk_info", False, "const", 1.0, device=device, major="259" if device[0] == "n" else "8",
                minor="0")
    mounts = (("/", "/dev/nvme0n1p2", "ext4", 100), ("/boot", "/dev/nvme0n1p1", "vfat", 1),
              ("/var", "/dev/sda1", "xfs", 400), ("/run", "tmpfs", "tmpfs", 2), ("/home", "/dev/sda2", "xfs", 200))
    for mountpoint, device, fstype, gib in mounts:
        labels = {"device": device, "fstype": fstype, "mountpoint": mountpoint}
        size = float(gib * 2**30)
        _family(s, "node_filesystem_size_bytes", False, "const", size, **labels)
        _family(s, "node_filesystem_avail_bytes", False, "step", size * 0.4, 1e-5, p=0.3, quantum=4096.0, **labels)
        _family(s, "node_filesystem_free_bytes", False, "step", size * 0.45, 1e-5, p=0.3, quantum=4096.0, **labels)
        _family(s, "node_filesystem_files", False, "const", float(gib * 65536), **labels)
        _family(s, "node_filesystem_files_free", False, "step", float(gib * 60000), 1e-4, p=0.1, **labels)
        _family(s, "node_filesystem_readonly", False, "const", 0.0, **labels)
        _family(s, "node_filesystem_device_error", False, "const", 0.0, **labels)
    net_counters = {
        "receive_bytes_total": ("rate", 120_000), "receive_packets_total": ("rate", 300),
        "receive_errs_total": ("zero", 0), "receive_drop_total": ("sparse", 1), "receive_fifo_total": ("zero", 0),
        "receive_frame_total": ("zero", 0), "receive_compressed_total": ("zero", 0),
        "receive_multicast_total": ("sparse", 2), "transmit_bytes_total": ("rate", 80_000),
        "transmit_packets_total": ("rate", 250), "transmit_errs_total": ("zero", 0),
        "transmit_drop_total": ("zero", 0), "transmit_fifo_total": ("zero", 0), "transmit_colls_total": ("zero", 0),
        "transmit_carrier_total": ("zero", 0), "transmit_compressed_total": ("zero", 0),
    }
    net_gauges = {"up": 1.0, "mtu_bytes": 1500.0, "speed_bytes": 1.25e9, "carrier": 1.0, "flags": 4099.0,
                  "iface_id": 2.0, "address_assign_type": 0.0, "net_dev_group": 0.0, "transmit_queue_length": 1000.0,
                  "dormant": 0.0, "protocol_type": 1.0, "carrier_changes_total": 2.0}
    for device, load in (("eth0", 1.0), ("lo", 0.3), ("docker0", 0.05)):
        for metric, (kind, mean) in net_counters.items():
            _family(s, f"node_network_{metric}", True, kind, rng.uniform(1e5, 1e7) * mean if kind != "zero" else 0.0,
                    mean * load, p=0.05, device=device)
        for metric, value in net_gauges.items():
            _family(s, f"node_network_{metric}", metric.endswith("_total"), "const", value, device=device)
        _family(s, "node_network_info", False, "const", 1.0, device=device, operstate="up", duplex="full",
                address=f"02:42:ac:11:00:{len(device):02x}")
    netstat = {
        "Tcp_ActiveOpens": ("rate", 5), "Tcp_PassiveOpens": ("rate", 8), "Tcp_RetransSegs": ("sparse", 3),
        "Tcp_InSegs": ("rate", 900), "Tcp_OutSegs": ("rate", 850), "Tcp_InErrs": ("zero", 0),
        "Tcp_OutRsts": ("sparse", 2), "Tcp_AttemptFails": ("sparse", 1), "Tcp_EstabResets": ("sparse", 1),
        "Udp_InDatagrams": ("rate", 40), "Udp_OutDatagrams": ("rate", 40), "Udp_InErrors": ("zero", 0),
        "Udp_NoPorts": ("sparse", 1), "Udp_RcvbufErrors": ("zero", 0), 
        "Udp6_InDatagrams": ("sparse", 2), "Udp6_OutDatagrams": ("sparse", 2), 
        "Icmp_InMsgs": ("sparse", 1), "Icmp_OutMsgs": ("sparse", 1), "Icmp_InErrors": ("zero", 0),
         "Ip_Forwarding": ("const", 1),
        "Ip6_InOctets": ("rate", 300), "Ip6_OutOctets": ("rate", 300), "IpExt_InOctets": ("rate", 120_000),
        "IpExt_OutOctets": ("rate", 80_000), "TcpExt_ListenDrops": ("zero", 0), "TcpExt_ListenOverflows": ("zero", 0),
        "TcpExt_SyncookiesSent": ("zero", 0), "TcpExt_SyncookiesRecv": ("zero", 0),
         "TcpExt_TCPSynRetrans": ("sparse", 1),
        "TcpExt_TCPTimeouts": ("sparse", 1), "TcpExt_TCPOFOQueue": ("sparse", 2),
    }
    for metric, (kind, mean) in netstat.items():
        _family(s, f"node_netstat_{metric}", kind != "const", kind,
                rng.uniform(1e4, 1e6) * mean if kind in ("rate", "sparse") else float(mean), mean, p=0.05)
    for metric, (kind, mean) in {"pgpgin": ("rate", 250), "pgpgout": ("rate", 900), "pswpin": ("zero", 0),
                                 "pswpout": ("zero", 0), "pgfault": ("rate", 20_000), "pgmajfault": ("sparse", 3),
                                 "oom_kill": ("zero", 0)}.items():
        _family(s, f"node_vmstat_{metric}", True, kind, rng.uniform(1e5, 1e7) * mean if kind != "zero" else 0.0,
                mean, p=0.02)
    for metric, (kind, value) in {
        "sockets_used": ("noisy", 420), "TCP_inuse": ("noisy", 60), "TCP_orphan": ("step", 0), "TCP_tw": ("noisy", 80),
        "TCP_alloc": ("noisy", 70), "TCP_mem": ("noisy", 12), "TCP_mem_bytes": ("noisy", 49152),
        "UDP_inuse": ("step", 6), "UDP_mem": ("step", 3), "UDP_mem_bytes": ("step", 12288), "UDPLITE_inuse": ("const", 0),
        "RAW_inuse": ("const", 0), "FRAG_inuse": ("const", 0), "FRAG_memory": ("const", 0), "TCP6_inuse": ("step", 8),
    }.items():
        _family(s, f"node_sockstat_{metric}", False, kind, float(value), 0.05, p=0.1)
    boot = float(int(time.time()) - rng.randrange(86400, 86400 * 90))
    for name, counter, kind, base, scale, p, quantum in (
        ("node_load1", False, "noisy", 0.9, 0.2, 0, 0.01), ("node_load5", False, "noisy", 0.8, 0.05, 0, 0.01),
        ("node_load15", False, "noisy", 0.7, 0.02, 0, 0.01), ("node_procs_running", False, "noisy", 2, 0.5, 0, 1),
        ("node_procs_blocked", False, "step", 0, 1, 0.05, 1), ("node_context_switches_total", True, "rate", 4e9, 6000, 0, 1),
        ("node_intr_total", True, "rate", 2e9, 3500, 0, 1), ("node_forks_total", True, "rate", 3e6, 6, 0, 1),
        ("node_boot_time_seconds", False, "const", boot, 0, 0, 1), ("node_time_seconds", False, "time", 0, 0, 0, 1),
        ("node_entropy_available_bits", False, "const", 256, 0, 0, 1),
        ("node_entropy_pool_size_bits", False, "const", 256, 0, 0, 1),
        ("node_filefd_allocated", False, "noisy", 2400, 0.01, 0, 1),
        ("node_filefd_maximum", False, "const", 9.2e18, 0, 0, 1),
        ("node_nf_conntrack_entries", False, "noisy", 180, 0.05, 0, 1),
        ("node_nf_conntrack_entries_limit", False, "const", 262144, 0, 0, 1),
        ("node_timex_offset_seconds", False, "noisy", 1e-5, 0.5, 0, 1e-6),
        ("node_timex_frequency_adjustment_ratio", False, "step", 1.00001, 1e-6, 0.05, 1e-9),
        ("node_timex_maxerror_seconds", False, "noisy", 0.2, 0.1, 0, 1e-6),
        ("node_timex_estimated_error_seconds", False, "step", 1e-6, 0.1, 0.05, 1e-6),
        ("node_timex_sync_status", False, "const", 1, 0, 0, 1), ("node_timex_status", False, "const", 8193, 0, 0, 1),
        ("node_timex_loop_time_constant", False, "const", 7, 0, 0, 1),
        ("node_timex_tick_seconds", False, "const", 0.01, 0, 0, 1),
        ("node_timex_pps_frequency_hertz", False, "const", 0, 0, 0, 1),
        ("node_pressure_cpu_waiting_seconds_total", True, "rate", 8000, 0.01, 0, 1e-6),
        ("node_pressure_io_waiting_seconds_total", True, "rate", 3000, 0.004, 0, 1e-6),
        ("node_pressure_io_stalled_seconds_total", True, "rate", 2500, 0.003, 0, 1e-6),
        ("node_pressure_memory_waiting_seconds_total", True, "sparse", 20, 0.001, 0.05, 1e-6),
        ("node_pressure_memory_stalled_seconds_total", True, "sparse", 15, 0.001, 0.05, 1e-6),
        ("node_textfile_scrape_error", False, "const", 0, 0, 0, 1),
    ):
        _family(s, name, counter, kind, float(base), scale, p, quantum)
    _family(s, "node_uname_info", False, "const", 1.0, machine="x86_64", release="6.1.0-18-amd64", sysname="Linux",
            version="#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1")
    _family(s, "node_os_info", False, "const", 1.0, id="debian", name="Debian GNU/Linux", version_id="12")
    _family(s, "node_exporter_build_info", False, "const", 1.0, version="1.5.0", goversion="go1.19.8",
            branch="debian/sid", revision="1.5.0-1+b6")
    collectors = ("arp", "btrfs", "conntrack", "cpu", "cpufreq", "diskstats", "dmi", "entropy", "filefd", "filesystem",
                  "hwmon", "loadavg", "mdadm", "meminfo", "netclass", "netdev", "netstat", "nvme", "os", "pressure",
                  "rapl", "schedstat", "sockstat", "softnet", "stat", "textfile", "thermal_zone", "time", "timex",
                  "uname", "vmstat")
    for collector in collectors:
        _family(s, "node_scrape_collector_duration_seconds", False, "noisy", rng.uniform(1e-5, 5e-3), 0.3,
                quantum=1e-9, collector=collector)
        _family(s, "node_scrape_collector_success", False, "const", 1.0, collector=collector)
    for quantile in ("0", "0.25", "0.5", "0.75", "1"):
        _family(s, "go_gc_duration_seconds", False, "step", 2e-5 * (1 + float(quantile) * 5), 0.2, p=0.1,
                quantum=1e-9, quantile=quantile)
    for name, counter, kind, base, scale, p in (
        ("go_gc_duration_seconds_sum", True, "sparse", 3.2, 1, 0.1), ("go_gc_duration_seconds_count", True, "sparse",
                                                                       4e4, 1, 0.1),
        ("go_goroutines", False, "step", 8, 0.2, 0.1), ("go_threads", False, "const", 9, 0, 0),
        ("go_memstats_alloc_bytes", False, "noisy", 3e6, 0.1, 0), ("go_memstats_alloc_bytes_total", True, "rate",
                                                                     9e10, 3e5, 0),
        ("go_memstats_buck_hash_sys_bytes", False, "const", 1.5e6, 0, 0),
        ("go_memstats_frees_total", True, "rate", 1e9, 3000, 0), ("go_memstats_gc_sys_bytes", False, "step", 8e6, 0.01, 0.1),
        ("go_memstats_heap_alloc_bytes", False, "noisy", 3e6, 0.1, 0),
        ("go_memstats_heap_idle_bytes", False, "noisy", 5e6, 0.1, 0),
        ("go_memstats_heap_inuse_bytes", False, "noisy", 4.5e6, 0.1, 0),
        ("go_memstats_heap_objects", False, "noisy", 2e4, 0.1, 0),
        ("go_memstats_heap_released_bytes", False, "step", 4e6, 0.05, 0.1),
        ("go_memstats_heap_sys_bytes", False, "const", 1.2e7, 0, 0),
        ("go_memstats_last_gc_time_seconds", False, "step", time.time(), 1e-7, 0.1),
        ("go_memstats_lookups_total", True, "zero", 0, 0, 0),
        ("go_memstats_mallocs_total", True, "rate", 1e9, 3000, 0),
        ("go_memstats_mcache_inuse_bytes", False, "const", 4800, 0, 0),
        ("go_memstats_mcache_sys_bytes", False, "const", 15600, 0, 0),
        ("go_memstats_mspan_inuse_bytes", False, "step", 1.1e5, 0.02, 0.1),
        ("go_memstats_mspan_sys_bytes", False, "const", 1.6e5, 0, 0),
        ("go_memstats_next_gc_bytes", False, "step", 6e6, 0.05, 0.1),
        ("go_memstats_other_sys_bytes", False, "const", 1e6, 0, 0),
        ("go_memstats_stack_inuse_bytes", False, "step", 7e5, 0.02, 0.05),
        ("go_memstats_stack_sys_bytes", False, "const", 7e5, 0, 0), ("go_memstats_sys_bytes", False, "const", 2.4e7, 0, 0),
        ("process_cpu_seconds_total", True, "rate", 4e3, 0.02, 0), ("process_max_fds", False, "const", 1048576, 0, 0),
        ("process_open_fds", False, "step", 10, 0.1, 0.05), ("process_resident_memory_bytes", False, "noisy", 2.2e7, 0.01, 0),
        ("process_start_time_seconds", False, "const", boot + 12, 0, 0),
        ("process_virtual_memory_bytes", False, "const", 7.3e8, 0, 0),
        ("process_virtual_memory_max_bytes", False, "const", 1.8e19, 0, 0),
        ("promhttp_metric_handler_errors_total", True, "zero", 0, 0, 0),
    ):
        _family(s, name, counter, kind, float(base), scale, p, quantum=0.01 if "seconds" in name else 1.0)
    for code in ("200", "500", "503"):
        _family(s, "promhttp_metric_handler_requests_total", True, "rate" if code == "200" else "zero",
                rng.uniform(1e4, 1e5) if code == "200" else 0.0, 1.0, code=code)
    for chip, sensors in (("platform_coretemp_0", ("temp1", "temp2", "temp3", "temp4", "temp5")),
                          ("nvme_nvme0", ("temp1",))):
        for sensor in sensors:
            _family(s, "node_hwmon_temp_celsius", False, "noisy", rng.uniform(38, 55), 0.02, quantum=1.0, chip=chip,
                    sensor=sensor)
    for zone, kind in (("0", "acpitz"), ("1", "x86_pkg_temp")):
        _family(s, "node_thermal_zone_temp", False, "noisy", rng.uniform(40, 50), 0.02, quantum=1.0, type=kind,
                zone=zone)
    # The application on the node.
    routes = ("/api/cart", "/api/checkout", "/api/items", "/api/items/{id}", "/api/login", "/api/search",
              "/healthz", "/metrics")
    for route in routes:
        for method in ("GET", "POST"):
            for code, share, kind in (("200", 1.0, "rate"), ("404", 0.01, "sparse"), ("500", 0.002, "sparse")):
                _family(s, "http_server_requests_total", True, kind, rng.uniform(1e4, 1e6) * share,
                        rng.uniform(1, 30) * share if kind == "rate" else 1.0, p=0.05 if code == "404" else 0.01,
                        app="shop", method=method, route=route, status_code=code)
        _family(s, "http_server_active_requests", False, "noisy", rng.uniform(0, 8), 0.5, app="shop", route=route)
    for queue in ("emails", "orders", "payments", "search-index"):
        _family(s, "app_queue_depth", False, "noisy", rng.uniform(0, 200), 0.3, app="shop", queue=queue)
    for cache in ("items", "prices", "sessions"):
        _family(s, "app_cache_hits_total", True, "rate", rng.uniform(1e5, 1e7), rng.uniform(50, 500), app="shop",
                cache=cache)
        _family(s, "app_cache_misses_total", True, "rate", rng.uniform(1e3, 1e5), rng.uniform(1, 20), app="shop",
                cache=cache)
    for state in ("active", "idle", "waiting"):
        _family(s, "app_db_pool_connections", False, "step", {"active": 4, "idle": 12, "waiting": 0}[state], 0.5,
                p=0.2, app="shop", state=state)
    s.sort(key=lambda series: series.name)  # one family's series together, as the exposition format requires
    return s


def advance(series: Series, rng: random.Random, now: float) -> None:
    """One tick of a series' value (see `Series`)."""
    kind = series.kind
    if kind == "rate":
        step = series.scale * rng.uniform(0.2, 1.8)
        series.value = round((series.value + step) / series.quantum) * series.quantum
    elif kind == "sparse":
        if rng.random() < series.p:
            series.value = round((series.value + rng.randint(1, max(1, int(series.scale)))) / series.quantum) \
                * series.quantum
    elif kind == "noisy":
        value = series.base * (1 + rng.uniform(-series.scale, series.scale)) if series.base else rng.uniform(0, 1)
        series.value = round(value / series.quantum) * series.quantum
    elif kind == "step":
        if rng.random() < series.p:
            value = series.value * (1 + rng.uniform(-series.scale, series.scale)) if series.value else \
                float(rng.randint(0, max(1, int(series.scale))))
            series.value = round(value / series.quantum) * series.quantum
    elif kind == "time":
        series.value = round(now, 3)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Workload:
    """Every node's series, advanced once per tick, rendered as OTLP and as text from the same values."""

    def __init__(self, nodes: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.node_names = [f"node-{i:02d}" for i in range(nodes)]
        self.nodes: dict[str, list[Series]] = {}
        for index, node in enumerate(self.node_names):
            series = node_series(random.Random(seed * 1000 + index))
            self.nodes[node] = series
        self.series_per_node = {node: len(series) for node, series in self.nodes.items()}
        self.tick_time = time.time()
        self.start_ns = int(self.tick_time * 1e9)
        self._text: dict[str, bytes] = {}
        self._build_otlp()

    @property
    def total_series(self) -> int:
        return sum(self.series_per_node.values())

    def common(self, node_index: int) -> tuple[tuple[str, str], ...]:
        return (*COMMON, ("availability_zone", ZONES[node_index % len(ZONES)]))

    def _build_otlp(self) -> None:
        """The OTLP request, built once: a tick only rewrites values and timestamps in place, because building
        ~50k attribute messages per second would make the generator, not the senders, the bottleneck."""
        request = ExportMetricsServiceRequest()
        self._points: list[tuple[NumberDataPoint, Series]] = []
        for index, node in enumerate(self.node_names):
            rm = request.resource_metrics.add()
            rm.resource.CopyFrom(Resource(attributes=[
                KeyValue(key="service.name", value=AnyValue(string_value=JOB)),
                KeyValue(key="service.instance.id", value=AnyValue(string_value=node)),
            ]))
            scope = rm.scope_metrics.add()
            families: dict[str, Metric] = {}
            for series in self.nodes[node]:
                metric = families.get(series.name)
                if metric is None:
                    metric = families[series.name] = scope.metrics.add(name=series.name)
                    if series.counter:
                        metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
                        metric.sum.is_monotonic = True
                    else:
                        metric.gauge.SetInParent()
                points = metric.sum.data_points if series.counter else metric.gauge.data_points
                point = points.add()
                for key, value in sorted((*self.common(index), *series.labels)):
                    point.attributes.add(key=key, value=AnyValue(string_value=value))
                if series.counter:
                    point.start_time_unix_nano = self.start_ns
                self._points.append((point, series))
        self._request = request

    def tick(self, now: float) -> None:
        self.tick_time = now
        rng = self.rng
        for series_list in self.nodes.values():
            for series in series_list:
                advance(series, rng, now)
        self._text.clear()

    def otlp_body(self) -> bytes:
        stamp = int(self.tick_time * 1000) * 1_000_000  # millisecond precision, as remote write keeps
        for point, series in self._points:
            point.as_double = series.value
            point.time_unix_nano = stamp
        return self._request.SerializeToString()

    def text(self, node: str) -> bytes:
        """The node's exposition for the current tick (rendered once per tick, on the first scrape)."""
        body = self._text.get(node)
        if body is None:
            index = self.node_names.index(node)
            fixed = (*self.common(index), ("instance", node), ("job", JOB))
            lines = []
            last = ""
            for series in self.nodes[node]:
                if series.name != last:
                    last = series.name
                    lines.append(f"# HELP {series.name} {series.name.replace('_', ' ')}.")
                    lines.append(f"# TYPE {series.name} {'counter' if series.counter else 'gauge'}")
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted((*fixed, *series.labels)))
                lines.append(f"{series.name}{{{labels}}} {series.value!r}")
            body = self._text[node] = ("\n".join(lines) + "\n").encode()
        return body


class Server:
    """The scrape endpoints, the tick loop and the OTLP pusher, with counters for the benchmark."""

    def __init__(self, workload: Workload, interval: float, otlp_url: str | None) -> None:
        self.workload = workload
        self.interval = interval
        self.otlp_url = otlp_url.rstrip("/") + "/v1/metrics" if otlp_url else None
        self.pushing = self.otlp_url is not None
        self.stats: dict[str, object] = {
            "nodes": len(workload.node_names), "series": workload.total_series,
            "series_per_node": workload.series_per_node, "interval": interval,
            "ticks": 0, "ticks_late": 0, "otlp_requests": 0, "otlp_skipped": 0, "otlp_errors": 0, "otlp_samples_accepted": 0,
            "otlp_last_error": "", "scrapes": 0, "scrape_samples": 0, "scrapes_by_path": {},
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_all)
        app.router.add_get("/metrics/{node}", self.metrics_node)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/stop", self.stop_pushing)
        return app

    def _count_scrape(self, path: str, samples: int) -> None:
        self.stats["scrapes"] += 1
        self.stats["scrape_samples"] += samples
        by_path = self.stats["scrapes_by_path"]
        by_path[path] = by_path.get(path, 0) + 1

    async def metrics_node(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        if node not in self.workload.nodes:
            raise web.HTTPNotFound(text=f"no node {node}")
        self._count_scrape(request.path, self.workload.series_per_node[node])
        return web.Response(body=self.workload.text(node), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def metrics_all(self, request: web.Request) -> web.Response:
        self._count_scrape(request.path, self.workload.total_series)
        body = b"".join(self.workload.text(node) for node in self.workload.node_names)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "pushing": self.pushing, "time": time.time()})

    async def stop_pushing(self, _request: web.Request) -> web.Response:
        self.pushing = False
        return web.json_response({"pushing": False})

    async def run_ticks(self) -> None:
        """Ticks on a fixed schedule (not `sleep(interval)` after the work, which would drift); a tick that
        comes late is counted, never made up, as a node-exporter would simply be scraped less often."""
        loop = asyncio.get_running_loop()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) if self.otlp_url else None
        inflight: set[asyncio.Task] = set()
        try:
            next_at = loop.time()
            while True:
                self.workload.tick(time.time())
                self.stats["ticks"] += 1
                if self.pushing and session is not None:
                    # The push runs beside the schedule, as an SDK's periodic exporter does: a slow answer
                    # from the agent must not delay the next tick (that would lower the load it is given).
                    if len(inflight) < MAX_PUSHES_IN_FLIGHT:
                        task = asyncio.create_task(self.push(session, self.workload.otlp_body()))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    else:
                        self.stats["otlp_skipped"] += 1
                next_at += self.interval
                delay = next_at - loop.time()
                if delay < 0:
                    self.stats["ticks_late"] += 1
                    next_at = loop.time()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            for task in list(inflight):
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            if session is not None:
                await session.close()

    async def push(self, session: aiohttp.ClientSession, body: bytes) -> None:
        self.stats["otlp_requests"] += 1
        try:
            async with session.post(self.otlp_url, data=body,
                                    headers={"Content-Type": "application/x-protobuf"}) as response:
                await response.read()
                if response.status // 100 == 2:
                    self.stats["otlp_samples_accepted"] += self.workload.total_series
                else:
                    self.stats["otlp_errors"] += 1
                    self.stats["otlp_last_error"] = f"HTTP {response.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.stats["otlp_errors"] += 1
            self.stats["otlp_last_error"] = repr(exc)


async def serve(args: argparse.Namespace) -> None:
    workload = Workload(args.nodes, args.seed)
    server = Server(workload, args.interval, args.otlp_url)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"port": port, "series": workload.total_series, "nodes": args.nodes}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticks = asyncio.create_task(server.run_ticks())
    try:
        await stop.wait()
    finally:
        ticks.cancel()
        await asyncio.gather(ticks, return_exceptions=True)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10, help="nodes simulated (~510 series each)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks (value updates, pushes)")
    parser.add_argument("--port", type=int, default=0, help="port for /metrics and /stats (0: any free one)")
    parser.add_argument("--otlp-url", help="push OTLP/HTTP protobuf to this base URL every tick (…/v1/metrics)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--describe", action="store_true", help="print the series count per family and exit")
    args = parser.parse_args(argv)
    if args.describe:
        workload = Workload(args.nodes, args.seed)
        families: dict[str, int] = {}
        for series in workload.nodes[workload.node_names[0]]:
            families[series.name] = families.get(series.name, 0) + 1
        labels = [len(s.labels) + len(COMMON) + 3 for s in workload.nodes[workload.node_names[0]]]  # + zone, job,
        print(json.dumps({"series_per_node": len(labels), "series": workload.total_series,     # instance
                          "labels_min": min(labels) + 1, "labels_max": max(labels) + 1,  # + __name__
                          "labels_mean": sum(labels) / len(labels) + 1, "families": len(families)}, indent=1))
        return 0
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
