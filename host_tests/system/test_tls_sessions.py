"""The firmware never holds more TLS sessions at once than docs/boards.md budgets for a board
without PSRAM (its mbedTLS sizing fits two beside Wi-Fi): one on Realer HTTPS, NUBISON and
DeviceHive, two on Realer MQTT (HTTPS for credentials beside the broker) and Xyte (HTTPS
beside its broker). Each run lasts until readings were delivered and the token renewed twice
(20 s lifetimes), so renewals overlap the long-lived sessions; the established TCP connections
of the firmware's process (all TLS) are sampled every 10 ms (tools/tls_sessions.py)."""
import pytest

from tools import tls_sessions

# docs/boards.md, "TLS sessions": the documented peak per configuration
DOCUMENTED_PEAK = {("realer", "https"): 1, ("realer", "mqtt"): 2, ("nubison", "https"): 1,
                   ("devicehive", "https"): 1, ("xyte", "https"): 2}
BOARD_BUDGET = 2  # sessions the WROOM board's sdkconfig sizes mbedTLS for


@pytest.mark.parametrize("platform,transport", sorted(DOCUMENTED_PEAK))
def test_peak_tls_sessions_within_documented_number(platform, transport, tmp_path):
    r = tls_sessions.run(platform, transport, 120, workdir=str(tmp_path), renewals=2)
    assert r["delivered"] > 0 and r["renewals"] >= 2, (
        "the run must deliver and renew twice to mean anything:\n" + r["log"][-3000:])
    assert r["samples"] > 100, r["samples"]
    assert 1 <= r["peak"] <= DOCUMENTED_PEAK[(platform, transport)] <= BOARD_BUDGET, (
        "%s/%s held %d TLS sessions at once (peers %s; the cloud listens on %s); "
        "docs/boards.md budgets %d; the log then:\n%s" % (
            platform, transport, r["peak"], r["peak_peers"], r["cloud_ports"],
            DOCUMENTED_PEAK[(platform, transport)],
            tls_sessions.around(r["log"], r["peak_wall"])))


def test_a_socket_the_table_lists_twice_counts_once():
    # /proc/net/tcp as read under connection churn: the firmware's socket (inode 501) twice,
    # another process's socket (inode 777) and a TIME_WAIT entry (inode 0) beside it
    head = "   0: 0100007F:C350 0100007F:{port} {state} 00000000:00000000 00:00000000 00000000" \
           "  1000        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
    lines = [head.format(port="A8D5", state="01", inode="501"),
             head.format(port="1F90", state="01", inode="777"),
             head.format(port="A8D5", state="06", inode="0"),
             head.format(port="A8D5", state="01", inode="501")]
    assert tls_sessions.held(lines, {"501", "502"}) == ["43221"]
