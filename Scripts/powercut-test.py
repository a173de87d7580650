#!/usr/bin/env python3
"""Crash consistency on real pmem: power the guest off hard at random points.

Each round boots the pmem guest on the same NVDIMM image (kept between boots),
first checks the previous round's log -- every record the writer acknowledged
before the power cut must be there, intact -- then starts
`daxmirror persist-writer`, which persists one record at a time and prints
`ack N` only after persist() returned. When the host has seen a randomly
chosen ack, it kills QEMU with SIGKILL: the guest gets no chance to flush,
sync or unmount anything. The last boot only verifies. Every other round the
records are written by the mirror's simulated device (`--through-mirror`:
Mirror.write, acknowledged when it returns) instead of the CPU.

With --pmem memmap the pmem is RAM (memmap=): daxmirror must say, before the
cut, that what it maps there does not survive power-off, and the boot after
the cut must find the writer's data gone (no filesystem at all: the RAM came
back empty). One cut; --rounds is ignored.

usage: Scripts/powercut-test.py [--rounds 20] [--fs ext4|xfs] [--kernel NAME] [--seed N] [--pmem nvdimm|memmap]
"""
import argparse, os, random, re, signal, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
daxmirror = os.path.join(here, ".build", "debug", "daxmirror")
guest = os.path.join(here, "Scripts", "guest.sh")

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--rounds", type=int, default=20)
ap.add_argument("--fs", default="ext4")
ap.add_argument("--kernel", default="backports")
ap.add_argument("--seed", type=int, default=None)
ap.add_argument("--records", type=int, default=200000)
ap.add_argument("--pmem", choices=["nvdimm", "memmap"], default="nvdimm")
args = ap.parse_args()
seed = args.seed if args.seed is not None else random.randrange(1 << 32)
rng = random.Random(seed)
cuts = "1 power cut on memmap= pmem" if args.pmem == "memmap" else f"{args.rounds} power cuts"
print(f"powercut: seed {seed} (replay with --seed {seed}), {cuts}, {args.fs}, kernel {args.kernel}", flush=True)
if not os.access(daxmirror, os.X_OK):
    sys.exit("powercut: build first (swift build)")

workdir = tempfile.mkdtemp(prefix="daxmirror-powercut-", dir=os.path.join(here, ".cache"))
image = os.path.join(workdir, "pmem.img")
passed = failed = 0


def boot(command, first, kill_after_ack=None):
    """Runs COMMAND in the guest. With kill_after_ack, SIGKILLs QEMU once that
    ack was seen (plus a random few ms). Returns (exit code, highest ack seen, output)."""
    argv = [guest, "--kernel", args.kernel, "--fs", args.fs, "--timeout", "300"]
    if args.pmem == "memmap":
        argv += ["--pmem", "memmap"] + ([] if first else ["--no-mkfs"])
    else:
        argv += ["--keep-image", image] + (["--mkfs"] if first else [])
    argv += ["--", "sh", "-c", command]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    highest, lines = -1, []
    for line in p.stdout:
        lines.append(line)
        m = re.match(r"ack (\d+)$", line.strip())
        if m:
            highest = int(m.group(1))
            if kill_after_ack is not None and highest >= kill_after_ack:
                time.sleep(rng.random() * 0.02)
                # The whole session: guest.sh and QEMU. QEMU gets SIGKILL: a power cut.
                subprocess.run(["pkill", "-KILL", "-s", str(p.pid), "qemu-system"], check=False)
                break
    rest = p.stdout.read()
    p.wait()
    lines.append(rest)
    for line in rest.splitlines():
        m = re.match(r"ack (\d+)$", line.strip())
        if m:
            highest = max(highest, int(m.group(1)))
    return p.returncode, highest, "".join(lines)


def memmap_cut():
    """One cut on memmap= pmem: told beforehand, gone afterwards."""
    said = f"{daxmirror} map /mnt/probe --create --size 4M --json"
    write = f"{daxmirror} persist-writer /mnt/log --records {args.records} --overwrite --hold"
    code, highest, out = boot(f"{said} && {write}", first=True, kill_after_ack=rng.randrange(20, 3000))
    told = '"survives_power_off": false' in out or '"survives_power_off":false' in out
    print(f"powercut (memmap): power cut after ack {highest}; daxmirror said beforehand that it does not survive power-off: {told}", flush=True)
    code2, _, out2 = boot(f"{daxmirror} persist-verify /mnt/log --acked {max(highest, 0)}", first=False)
    gone = code2 == 3 and "what was written before the power-off is gone" in out2
    print(f"powercut (memmap): the boot after the cut: exit {code2}; the data is gone: {gone}", flush=True)
    if not (told and highest >= 0 and gone):
        print(f"powercut (memmap): FAILED (seed {seed}):\n{out[-3000:]}\n{out2[-2000:]}", flush=True)
        return 0, 1
    return 1, 0


if args.pmem == "memmap":
    passed, failed = memmap_cut()
    subprocess.run(["rm", "-rf", workdir])
    print(f"powercut: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)

acked = None
for rnd in range(args.rounds + 1):
    steps = []
    if acked is not None:
        steps.append(f"{daxmirror} persist-verify /mnt/log --acked {acked}")
    last = rnd == args.rounds
    if not last:
        through = " --through-mirror" if rnd % 2 == 1 else ""
        steps.append(f"{daxmirror} persist-writer /mnt/log --records {args.records} --overwrite --hold{through}")
    # The device's writes are slower under emulation (each revalidates against
    # pagemap first): cut those rounds earlier so the run stays short.
    target = None if last else rng.randrange(20, 3000 if rnd % 2 == 0 else 600)
    t0 = time.time()
    code, highest, out = boot(" && ".join(steps), first=(rnd == 0), kill_after_ack=target)
    verified = acked is not None
    ok_verify = (not verified) or ('"ok":true' in out)
    if verified:
        if ok_verify:
            passed += 1
            print(f"powercut: round {rnd}: all {acked + 1} acknowledged records intact after the power cut", flush=True)
        else:
            failed += 1
            print(f"powercut: round {rnd}: LOST OR TORN records (seed {seed}):\n{out}", flush=True)
    if not last:
        if highest < 0:
            failed += 1
            print(f"powercut: round {rnd}: the writer never acknowledged a record:\n{out}", flush=True)
            acked = None
        else:
            acked = highest
            who = "device (mirror)" if rnd % 2 == 1 else "CPU"
            print(f"powercut: round {rnd}: power cut after ack {highest} of {who} writes (target {target}), {time.time() - t0:.1f}s", flush=True)
    elif code != 0 and ok_verify:
        failed += 1
        print(f"powercut: last boot failed (exit {code}):\n{out}", flush=True)

subprocess.run(["rm", "-rf", workdir])
print(f"powercut: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
