"""deeplab_lite in PyTorch, the peer of flowseg's built-in model (ops/src/models/deeplab_lite.rs).

Same layers in the same order, same BN settings (eps 1e-5, momentum 0.1), conv padding and
dilation, ASPP rates (1x1, then 3x3 with dilation 1, 2, 3), decoder and bilinear upsampling
(align_corners=False); parameter and buffer names equal flowseg's state names without the model
prefix (`student.stem.conv.weight` -> `stem.conv.weight`), so `load_state_dict` takes flowseg's
initial weights. PyTorch's BN adds one buffer flowseg has not, `num_batches_tracked` (read only
when momentum is None); it is the one name allowed to differ.

Modes (driven by benches/peer/run.sh; see docs/BENCHMARKS.md, "Peer: PyTorch, same machine"):

  check <dir>          numerical cross-check against `cargo bench --bench peer_step -- export <dir>`
  time <n> [--init F] [--init-r18 F]
                       median ms per step, one JSON line (as `peer_step time <n>`): the supervised
                       step (benches/peer/graphs/supervised.yaml) at 64x64 and 128x128, the CutMix-Seg step
                       (benches/peer/graphs/cutmix_seg.yaml, `cutmix_step`) at 64x64, the eval forward;
                       with --init-r18 also both steps of resnet18_deeplabv3plus
                       (resnet18_deeplabv3plus.py) at batch 8 of 128x128
  time-gpu <n>         the GPU step benchmark (as `peer_step gpu <n>`, scripts/gpu-check.sh): the
                       CutMix-Seg step at batch 16 (+ 2 x 16) of 256x256 and resnet50_deeplabv3plus's
                       supervised step (resnet50_deeplabv3plus.py) at batch 8 of 512x512, eager,
                       on the GPU (torch's own initial weights: timing only)
  profile <n>          torch.profiler self-time by aten op of one supervised training step
  report <jsonl>       medians over rounds and the flowseg/PyTorch ratios, as a Markdown table

The network's classes and width come from flowseg's exported initial state (`--init
<dir>/init.safetensors`, which run.sh passes; its weights are loaded too), else from the graphs
(6 classes, width 16). Optimizer as both graphs: AdamW, lr 2e-3 (constant: the poly schedule is
a scalar), weight decay 0.01, PyTorch's default betas and eps (= flowseg's).
"""

import argparse
import copy
import json
import math
import resource
import statistics
import sys
import time
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F

import resnet18_deeplabv3plus as r18
import resnet50_deeplabv3plus as r50

IGNORE_INDEX = 255

# benches/peer/graphs/supervised.yaml and benches/peer/graphs/cutmix_seg.yaml.
CLASSES, WIDTH = 6, 16
LR, WEIGHT_DECAY = 2e-3, 0.01
# benches/peer/graphs/cutmix_seg.yaml: box of half the image, aspect log-uniform on [0.5, 2]; teacher
# confidence threshold; EMA decay (no ramp).
MIX_AREA, MIX_ASPECT = 0.5, (0.5, 2.0)
CONFIDENCE = 0.97
EMA_ALPHA = 0.99


RELU = F.relu  # the check records every call's input; see `check`


# BN (eps 1e-5, momentum 0.1) and conv with flowseg's "same" padding: shared with the resnet peer.
bn, conv = r18.bn, r18.conv


class CBR(nn.Module):
    """conv -> bn -> relu, modules `conv` and `bn` (flowseg's `conv_bn_relu`)."""

    def __init__(self, ci, co, k, stride=1, dilation=1):
        super().__init__()
        self.conv = conv(ci, co, k, stride, dilation)
        self.bn = bn(co)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


# torchvision's BasicBlock (conv1-bn1-relu-conv2-bn2 + (x | downsample(x)), relu): one class
# for both peers, in resnet18_deeplabv3plus.py (deeplab_lite's blocks are undilated).
BasicBlock = r18.BasicBlock


class ASPP(nn.Module):
    """Branches `0` (1x1) and `1`..`3` (3x3, dilation b), concatenated in order, `project`."""

    def __init__(self, ci, a):
        super().__init__()
        self.add_module("0", CBR(ci, a, 1))
        for b in (1, 2, 3):
            self.add_module(str(b), CBR(ci, a, 3, dilation=b))
        self.project = CBR(4 * a, a, 1)

    def forward(self, x):
        branches = [getattr(self, str(b))(x) for b in range(4)]
        return self.project(torch.cat(branches, 1))


class Decoder(nn.Module):
    """`reduce` the skip to r channels; ASPP output upsampled to the skip's size; cat (upsampled
    first); `fuse` 3x3 to d channels."""

    def __init__(self, a, low, r, d):
        super().__init__()
        self.reduce = CBR(low, r, 1)
        self.fuse = CBR(a + r, d, 3)

    def forward(self, features, low_level):
        skip = self.reduce(low_level)
        up = F.interpolate(features, size=low_level.shape[-2:], mode="bilinear",
                           align_corners=False)
        return self.fuse(torch.cat([up, skip], 1))


class DeepLabLite(nn.Module):
    def __init__(self, classes=3, width=16, depth=1, output_stride=8):
        super().__init__()
        c = width
        self.stem = CBR(3, c, 3, stride=2)
        stages = [(c, 1), (2 * c, 2), (4 * c, 2)] + ([(8 * c, 2)] if output_stride == 16 else [])
        ci = c
        self.stages = []
        for i, (co, stride) in enumerate(stages):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(ci, co, stride if j == 0 else 1))
                ci = co
            layer = nn.Sequential(*blocks)
            self.add_module(f"layer{i + 1}", layer)
            self.stages.append(layer)
        self.aspp = ASPP(ci, 2 * c)
        self.decoder = Decoder(2 * c, 2 * c, c, 2 * c)
        self.classifier = nn.Conv2d(2 * c, classes, 1, bias=True)

    def forward(self, image):
        x = self.stem(image)
        low_level = None
        for i, layer in enumerate(self.stages):
            x = layer(x)
            if i == 1:
                low_level = x
        features = self.aspp(x)
        y = self.classifier(self.decoder(features, low_level))
        return F.interpolate(y, size=image.shape[-2:], mode="bilinear", align_corners=False)


def config_of(state):
    """(classes, width, depth, output_stride) from a flowseg state dict."""
    width = state["stem.conv.weight"].shape[0]
    classes = state["classifier.weight"].shape[0]
    depth = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
    output_stride = 16 if any(k.startswith("layer4.") for k in state) else 8
    return classes, width, depth, output_stride


# ---------------------------------------------------------------------------------- check


def rel(a, ref):
    """max |a - ref| / max |ref| over one tensor (the scale-free error of a whole tensor)."""
    a, ref = a.double(), ref.double()
    scale = ref.abs().max().item()
    return (a - ref).abs().max().item() / max(scale, 1e-30)


def group_of(name, tensor):
    if name.startswith(("classifier.", "head.classifier.")):
        return "classifier weight/bias"
    if tensor.dim() == 4:
        return "conv weights"
    return "BN gamma/beta"


def describe(init):
    """The network flowseg exported, in words."""
    if r18.is_resnet18(init):
        return f"resnet18_deeplabv3plus(classes={r18.classes_of(init)}, output_stride=16)"
    cfg = config_of(init)
    return (f"deeplab_lite(classes={cfg[0]}, width={cfg[1]}, depth={cfg[2]}, "
            f"output_stride={cfg[3]})")


def classes_in(init):
    return r18.classes_of(init) if r18.is_resnet18(init) else config_of(init)[0]


def from_flowseg(init):
    """deeplab_lite, or resnet18_deeplabv3plus when the names are torchvision's, with flowseg's
    initial state `init` (a state dict without the model prefix) loaded; asserts that PyTorch's
    state dict minus `num_batches_tracked` has exactly its names and shapes."""
    if r18.is_resnet18(init):
        model = r18.ResNet18DeepLabV3Plus(r18.classes_of(init))
    else:
        model = DeepLabLite(*config_of(init))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    theirs = {k: tuple(v.shape) for k, v in init.items()}
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    assert not (missing or extra or shapes), (
        f"state names differ: not in flowseg {missing}, not in PyTorch {extra}, "
        f"shapes {[(k, ours[k], theirs[k]) for k in shapes]}")
    result = model.load_state_dict(init, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), result.missing_keys
    return model


def check(args):
    from safetensors.torch import load_file

    init = load_file(f"{args.dir}/init.safetensors")
    batch = load_file(f"{args.dir}/batch.safetensors")
    expected = load_file(f"{args.dir}/expected.safetensors")
    torch.manual_seed(0)
    model = from_flowseg(init)
    params = dict(model.named_parameters())
    n_params = sum(p.numel() for p in params.values())
    grads_flowseg = {k[len("grad."):]: v for k, v in expected.items() if k.startswith("grad.")}
    assert set(params) == set(grads_flowseg), (
        f"trained parameters differ: {sorted(set(params) ^ set(grads_flowseg))}")
    n_flowseg = sum(v.numel() for v in grads_flowseg.values())
    assert n_params == n_flowseg, f"parameter counts differ: PyTorch {n_params}, flowseg {n_flowseg}"
    print(f"{describe(init)}: {len(params)} parameter tensors, {n_params} parameters, "
          f"{len(init) - len(params)} BN buffers; names and shapes equal flowseg's")

    image, label = batch["image"], batch["label"].long()
    print(f"batch: image {tuple(image.shape)}, label {tuple(label.shape)}")

    def one_step(m, dtype, follow=None):
        """One train-mode forward + backward in `dtype`. With `follow` (one tensor per ReLU
        call), each ReLU takes the branch that tensor's sign gives instead of its own input's:
        an f64 replay of another implementation's choices at pre-activations within rounding
        of 0."""
        m = m.to(dtype)
        m.train()
        m.zero_grad(set_to_none=True)
        relu_inputs = []  # every ReLU's input, in call order

        def relu(x, *a, **k):
            relu_inputs.append(x.detach().double())
            if follow is None:
                return RELU(x, *a, **k)
            ref = follow[len(relu_inputs) - 1]
            assert ref.shape == x.shape, f"ReLU {len(relu_inputs) - 1}: {ref.shape} vs {x.shape}"
            return torch.where(ref.to(x.device) > 0, x, torch.zeros_like(x))

        with mock.patch.object(F, "relu", relu):
            logits = m(image.to(dtype))
        loss = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX)
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in m.named_parameters()}
        running = {k: v.detach().clone() for k, v in m.state_dict().items()
                   if k.endswith(("running_mean", "running_var"))}
        return logits.detach(), loss.detach(), grads, running, relu_inputs

    logits, loss, grads, running, relu32 = one_step(copy.deepcopy(model), torch.float32)
    logits64, loss64, grads64, running64, relu64 = one_step(copy.deepcopy(model), torch.float64)
    # A ReLU input within float32 rounding of 0 may land on either side in a correct float32
    # forward, and every gradient upstream of it moves with the choice (one such pixel moved
    # some weight gradients of a synthetic batch by 10 %; one pixel of an ASPP branch moves its
    # BN and conv gradients by 4-13 % of their max). So each float32 result is compared with the
    # f64 replay that takes *its* branch at every ReLU: PyTorch f32's own, and flowseg's from
    # the ReLU inputs it exported. Anything else off by more than the tolerance is an error.
    relu_fs = [expected[k] for k in sorted(k for k in expected if k.startswith("relu_in."))]
    if len(relu_fs) != len(relu64) or any(a.shape != b.shape for a, b in zip(relu_fs, relu64)):
        print(f"flowseg exported {len(relu_fs)} ReLU inputs, PyTorch calls ReLU {len(relu64)} "
              "times (or their shapes differ): the networks do not pair up")
        return 1
    _, _, grads64_pt, _, _ = one_step(copy.deepcopy(model), torch.float64, follow=relu32)
    _, _, grads64_fs, _, _ = one_step(copy.deepcopy(model), torch.float64, follow=relu_fs)

    def flips(ours):
        """(count, largest |x| in f64 among them) of ReLU inputs on the other side of 0."""
        masks = [(a > 0) != (b > 0) for a, b in zip(ours, relu64)]
        worst = max((b[f].abs().max().item() for f, b in zip(masks, relu64) if f.any()),
                    default=0.0)
        return sum(int(f.sum()) for f in masks), worst

    tolerances = {"logits": 1e-4, "loss": 1e-4, "gradients": 1e-3, "running stats": 1e-4}
    groups = {}  # group -> (tolerance, [(name, flowseg vs torch, torch vs f64, flowseg vs f64)])

    def add(group, tol, name, flowseg, torch32, ref_fs, ref_pt):
        groups.setdefault(group, (tol, []))[1].append(
            (name, rel(flowseg, torch32), rel(torch32, ref_pt), rel(flowseg, ref_fs)))

    add("logits", tolerances["logits"], "logits", expected["logits"], logits, logits64, logits64)
    add("loss", tolerances["loss"], "loss", expected["loss"], loss, loss64, loss64)
    for k in sorted(grads):
        add(f"grad: {group_of(k, grads[k])}", tolerances["gradients"], k, grads_flowseg[k], grads[k],
            grads64_fs[k], grads64_pt[k])
    for k in sorted(running):
        add("BN running stats (updated)", tolerances["running stats"], k,
            expected[f"running.{k}"], running[k], running64[k], running64[k])

    print(f"loss: flowseg {expected['loss'].item():.7f}, PyTorch {loss.item():.7f} "
          f"(f64 {loss64.item():.7f})")
    print("max relative error per group, err = max|a - b| / max|b| over each tensor; "
          "f64 = the f64 replay on the same ReLU branches as the f32 side:")
    print(f"  {'group':36} {'tensors':>7} {'tol':>6} {'flowseg vs torch':>17} "
          f"{'torch f32 vs f64':>17} {'flowseg vs f64':>15}  worst tensor")
    ok = True
    for group, (tol, rows) in groups.items():
        worst = max(rows, key=lambda r: r[3])
        m32 = max(r[2] for r in rows)
        mfs = max(r[3] for r in rows)
        good = all(r[3] <= tol for r in rows)
        ok &= good
        print(f"  {group:36} {len(rows):7d} {tol:6.0e} {max(r[1] for r in rows):17.2e} "
              f"{m32:17.2e} {mfs:15.2e}  {worst[0]} {'ok' if good else 'FAIL'}")
        if m32 > tol:  # not a verdict on flowseg; shown so that it is not mistaken for one
            print(f"    PyTorch f32's worst: {max(rows, key=lambda r: r[2])[0]}")
    for who, ours in (("PyTorch f32", relu32), ("flowseg", relu_fs)):
        n, closest = flips(ours)
        print(f"ReLU inputs {who} puts on the other side of 0 than f64: {n} of "
              f"{sum(r.numel() for r in relu64)} (largest such |x| in f64: {closest:.1e})")
    print("cross-check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------- timing


def setup(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(n, f, device, warmup=3):
    for _ in range(warmup):
        f()
    sync(device)
    times = []
    for _ in range(max(n, 1)):
        t = time.perf_counter()
        f()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def data(size, device, classes, batch=16):
    g = torch.Generator().manual_seed(size)
    image = torch.rand(batch, 3, size, size, generator=g)
    label = torch.randint(0, classes, (batch, size, size), generator=g)
    return image.to(device), label.to(device)


def unlabeled(size, device, batch=16):
    """Two unlabeled batches with their validity maps (1 on every pixel: no crop padding), as
    the loader's `u_image`, `u_valid`, `u_image_2`, `u_valid_2`."""
    g = torch.Generator().manual_seed(size + 1)
    out = []
    for _ in range(2):
        out.append(torch.rand(batch, 3, size, size, generator=g).to(device))
        out.append(torch.ones(batch, size, size).to(device))
    return out


def train_step(model, opt, image, label):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(image), label, ignore_index=IGNORE_INDEX)
        loss.backward()
        opt.step()
    return step


def box_masks(n, h, w, generator):
    """CutMix-Seg's masks, f32[n, 1, h, w] on the CPU: per sample one box of MIX_AREA of the
    image, aspect (height / width) log-uniform on MIX_ASPECT, placed uniformly inside the image;
    1 inside (the pixel comes from the second batch)."""
    lo, hi = math.log(MIX_ASPECT[0]), math.log(MIX_ASPECT[1])
    aspect = torch.exp(torch.empty(n).uniform_(lo, hi, generator=generator))
    bh = (torch.sqrt(MIX_AREA * aspect) * h).round().clamp(1, h)
    bw = (torch.sqrt(MIX_AREA / aspect) * w).round().clamp(1, w)
    y0 = (torch.rand(n, generator=generator) * (h - bh + 1)).floor()
    x0 = (torch.rand(n, generator=generator) * (w - bw + 1)).floor()
    ys, xs = torch.arange(h), torch.arange(w)
    inside_y = (ys >= y0[:, None]) & (ys < (y0 + bh)[:, None])  # [n, h]
    inside_x = (xs >= x0[:, None]) & (xs < (x0 + bw)[:, None])  # [n, w]
    return (inside_y[:, None, :, None] & inside_x[:, None, None, :]).float()


def float_state(model):
    """The model's float tensors (parameters and BN running statistics), in state-dict order;
    they share storage with the model."""
    return [v for v in model.state_dict().values() if v.dtype.is_floating_point]


def cutmix_step(student, opt, labeled, unlabeled_batches, wrap=lambda m: m):
    """One step of benches/peer/graphs/cutmix_seg.yaml: cross-entropy on the labeled batch; the EMA teacher
    (eval mode, no gradient) on both unlabeled batches; one box mask per sample; the images,
    validity maps and teacher logits mixed with it; the student on the mixed images; loss = CE +
    confident fraction × mean over pixels of validity · Σ_classes (p_student − p_teacher)²; one
    backward, AdamW, then the teacher's float state (parameters and BN buffers, as the official
    code's EMAWeightOptimizer) moves towards the student's with α = EMA_ALPHA. Returns the step
    and the teacher."""
    image, label = labeled
    u0, v0, u1, v1 = unlabeled_batches
    n, _, h, w = u0.shape
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    teacher_state, student_state = float_state(teacher), float_state(student)
    assert [t.shape for t in teacher_state] == [s.shape for s in student_state]
    masks = torch.Generator().manual_seed(0)
    # `wrap` (torch.compile for the compiled column) applies to the calls, not to the modules
    # whose state the EMA and the optimizer update in place.
    student_fn, teacher_fn = wrap(student), wrap(teacher)

    def step():
        mask = box_masks(n, h, w, masks).to(u0.device)
        with torch.no_grad():
            mixed_logits = teacher_fn(u0) * (1 - mask) + teacher_fn(u1) * mask
            teacher_probs = F.softmax(mixed_logits, dim=1)
            confident_fraction = (teacher_probs.amax(dim=1) >= CONFIDENCE).float().mean()
            mixed_image = u0 * (1 - mask) + u1 * mask
            mixed_valid = v0 * (1 - mask[:, 0]) + v1 * mask[:, 0]
        opt.zero_grad(set_to_none=True)
        sup = F.cross_entropy(student_fn(image), label, ignore_index=IGNORE_INDEX)
        student_probs = F.softmax(student_fn(mixed_image), dim=1)
        squared = ((student_probs - teacher_probs) ** 2).sum(dim=1)
        cons = (squared * mixed_valid).mean() * confident_fraction
        (sup + cons).backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(teacher_state, EMA_ALPHA)
            torch._foreach_add_(teacher_state, student_state, alpha=1 - EMA_ALPHA)
    return step, teacher


def make(device, init=None):
    """The graphs' student (from flowseg's initial state when given) and its AdamW."""
    torch.manual_seed(0)
    model = from_flowseg(init) if init is not None else DeepLabLite(CLASSES, WIDTH)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    return model, opt


def elements(tensors):
    return sum(t.numel() for t in tensors)


def timed_steps(n, step, device):
    """Median ms of `n` steps after 3 warm-up ones, and the minor page faults per timed step."""
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ms = round(median_ms(n, step, device, warmup=0), 3)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // max(n, 1)
    return ms, faults


def load_init(args):
    if not args.init:
        return None
    from safetensors.torch import load_file
    return load_file(args.init)


def time_all(args):
    device = setup(args)
    init = load_init(args)
    classes = config_of(init)[0] if init is not None else CLASSES
    # --compile: the same steps with every module call through torch.compile (inductor; the
    # first warm-up step compiles, so the timed steps are the compiled code's).
    wrap = torch.compile if args.compile else (lambda m: m)
    out = {"impl": "pytorch-compile" if args.compile else "pytorch",
           "threads": torch.get_num_threads(), "n": args.n, "device": device.type}
    faults = {}
    for size in (64, 128):
        model, opt = make(device, init)
        step = train_step(wrap(model), opt, *data(size, device, classes))
        out[f"sup_b16_{size}"], faults[f"faults_per_step_{size}"] = timed_steps(
            args.n, step, device)
    counts = {"params_sup": elements(model.parameters())}
    del model, opt, step

    model, opt = make(device, init)
    step, teacher = cutmix_step(model, opt, data(64, device, classes), unlabeled(64, device),
                                wrap)
    out["cutmix_b16_64"], faults["faults_per_step_cutmix_64"] = timed_steps(args.n, step, device)
    counts["params_cutmix"] = elements(model.parameters())
    counts["teacher_state_cutmix"] = elements(float_state(teacher))
    del model, opt, step, teacher

    model, _ = make(device, init)
    model.eval()
    image, _ = data(64, device, classes)
    model_fn = wrap(model)

    def forward():
        with torch.inference_mode():
            model_fn(image)
    out["eval_b16_64"] = round(median_ms(args.n, forward, device), 3)
    del model, model_fn

    # resnet18_deeplabv3plus from flowseg's exported initial state: supervised and CutMix-Seg
    # steps at batch 8 (+ 2 x 8 unlabeled) of 128x128.
    if args.init_r18:
        from safetensors.torch import load_file
        init18 = load_file(args.init_r18)
        classes18 = r18.classes_of(init18)
        model, opt = make(device, init18)
        step = train_step(wrap(model), opt, *data(128, device, classes18, batch=8))
        out["r18_sup_b8_128"], faults["faults_per_step_r18_128"] = timed_steps(
            args.n, step, device)
        counts["params_r18"] = elements(model.parameters())
        del model, opt, step
        model, opt = make(device, init18)
        step, teacher = cutmix_step(model, opt, data(128, device, classes18, batch=8),
                                    unlabeled(128, device, batch=8), wrap)
        out["r18_cutmix_b8_128"], faults["faults_per_step_r18_cutmix_128"] = timed_steps(
            args.n, step, device)
        counts["teacher_state_r18_cutmix"] = elements(float_state(teacher))
        del model, opt, step, teacher
    print(json.dumps({**out, **faults, **counts}))


def profile(args):
    from torch.profiler import ProfilerActivity, profile as prof

    device = setup(args)
    init = load_init(args)
    classes = config_of(init)[0] if init is not None else CLASSES
    for graph, size in (("supervised", 64), ("supervised", 128), ("cutmix_seg", 64)):
        model, opt = make(device, init)
        if graph == "supervised":
            step = train_step(model, opt, *data(size, device, classes))
        else:
            labeled, batches = data(size, device, classes), unlabeled(size, device)
            step = cutmix_step(model, opt, labeled, batches)[0]
        for _ in range(3):
            step()
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(args.n):
                step()
        rows = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
        ms = lambda us: round(us / args.n / 1e3, 3)
        total = sum(e.self_cpu_time_total for e in rows)
        kinds = {}
        for e in rows:
            kind = KINDS.get(e.key, "other")
            if e.key.startswith("aten::_foreach") or e.key.startswith("Optimizer."):
                kind = "optimizer update"
            kinds[kind] = kinds.get(kind, 0) + e.self_cpu_time_total
        kinds = {k: ms(v) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
        top = {e.key: ms(e.self_cpu_time_total) for e in rows[:20]}
        print(json.dumps({"impl": "pytorch", "graph": graph, "size": size, "threads": torch.get_num_threads(),
                          "self_ms_per_step": ms(total), "by_flowseg_kind": kinds,
                          "top_self_ms": top}))


# aten ops (self time) by the flowseg op kind doing the same work; the rest is "other"
# (autograd engine, allocation, copies and fills, views).
KINDS = {
    "aten::mkldnn_convolution": "conv2d",
    "aten::convolution": "conv2d",
    "aten::_convolution": "conv2d",
    "aten::conv2d": "conv2d",
    "aten::convolution_backward": "conv2d_bwd",
    "aten::native_batch_norm": "batch_norm",
    "aten::_batch_norm_impl_index": "batch_norm",
    "aten::batch_norm": "batch_norm",
    "aten::native_batch_norm_backward": "batch_norm_bwd",
    "aten::clamp_min": "relu",
    "aten::relu": "relu",
    "aten::threshold_backward": "relu_bwd",
    "aten::upsample_bilinear2d": "resize_bilinear",
    "aten::upsample_bilinear2d_backward": "resize_bilinear_bwd",
    "aten::cat": "concat",
    "aten::add": "add",
    "aten::add_": "grad_add",
    "aten::_log_softmax": "cross_entropy",
    "aten::log_softmax": "cross_entropy",
    "aten::nll_loss2d_forward": "cross_entropy",
    "aten::nll_loss_nd": "cross_entropy",
    "aten::cross_entropy_loss": "cross_entropy",
    "aten::_log_softmax_backward_data": "cross_entropy_bwd",
    "aten::nll_loss2d_backward": "cross_entropy_bwd",
    "aten::_softmax": "softmax",
    "aten::_softmax_backward_data": "softmax_bwd",
}


# ---------------------------------------------------------------------------------- report


def report(args):
    rows = [json.loads(line) for line in open(args.jsonl) if line.startswith("{")]
    by_impl = {}
    for r in rows:
        by_impl.setdefault(r["impl"], []).append(r)
    fs, pt = by_impl["flowseg"], by_impl["pytorch"]
    pc = by_impl.get("pytorch-compile", [])
    failed = [r for r in pc if "error" in r]
    pc = [r for r in pc if "error" not in r]
    # Same networks and objectives on both sides: the trained parameters and the teacher's
    # float state (parameters and BN buffers) have the same element counts.
    for key in ("params_sup", "params_cutmix", "teacher_state_cutmix", "params_r18",
                "teacher_state_r18_cutmix"):
        seen = {r.get(key) for r in fs + pt}
        assert len(seen) == 1, f"{key} differs between flowseg and PyTorch rounds: {seen}"
    names = [("sup_b16_64", "supervised step, batch 16 of 64×64"),
             ("sup_b16_128", "supervised step, batch 16 of 128×128"),
             ("cutmix_b16_64", "CutMix-Seg step, batch 16 + 2 × 16 of 64×64"),
             ("eval_b16_64", "eval forward, batch 16 of 64×64"),
             ("r18_sup_b8_128", "resnet18_deeplabv3plus supervised step, batch 8 of 128×128"),
             ("r18_cutmix_b8_128",
              "resnet18_deeplabv3plus CutMix-Seg step, batch 8 + 2 × 8 of 128×128")]
    names = [(k, label) for k, label in names if all(k in r for r in fs + pt)]
    print(f"rounds: flowseg {len(fs)}, PyTorch {len(pt)} (alternating); threads: flowseg "
          f"{fs[0]['threads']}, PyTorch {pt[0]['threads']} ({pt[0]['device']}); "
          f"{fs[0]['n']} timed steps per round; trained parameters {fs[0]['params_sup']} "
          f"(supervised), {fs[0]['params_cutmix']} (CutMix-Seg student), teacher float state "
          f"{fs[0]['teacher_state_cutmix']}"
          + (f"; resnet18_deeplabv3plus {fs[0]['params_r18']} trained, teacher float state "
             f"{fs[0]['teacher_state_r18_cutmix']}" if "params_r18" in fs[0] else "")
          + ", equal on both sides")
    print()
    compiled = ("| torch.compile ms: median (each round) | flowseg / torch.compile |"
                if pc else "")
    print("| measurement | flowseg ms: median (each round) | PyTorch ms: median (each round) | "
          "flowseg / PyTorch, medians | best rounds " + compiled)
    print("| --- | ---: | ---: | ---: | ---: " + ("| ---: | ---: |" if pc else "|"))
    for key, label in names:
        a = [r[key] for r in fs]
        b = [r[key] for r in pt]
        ma, mb = statistics.median(a), statistics.median(b)
        fmt = lambda v: ", ".join(f"{x:.1f}" for x in v)
        row = (f"| {label} | **{ma:.2f}** ({fmt(a)}) | **{mb:.2f}** ({fmt(b)}) | "
               f"**{ma / mb:.2f}×** | {min(a) / min(b):.2f}× ")
        if pc:
            c = [r[key] for r in pc]
            mc = statistics.median(c)
            row += f"| **{mc:.2f}** ({fmt(c)}) | **{ma / mc:.2f}×** "
        print(row + "|")
    for r in failed:
        print(f"\ntorch.compile failed: {r['error']}")
    faults = [f"{label}: flowseg {statistics.median(r[k] for r in fs):.0f}, "
              f"PyTorch {statistics.median(r[k] for r in pt):.0f}"
              for k, label in (("faults_per_step_64", "supervised 64×64"),
                               ("faults_per_step_128", "supervised 128×128"),
                               ("faults_per_step_cutmix_64", "CutMix-Seg 64×64"),
                               ("faults_per_step_r18_128", "resnet18 supervised 128×128"),
                               ("faults_per_step_r18_cutmix_128", "resnet18 CutMix-Seg 128×128"))
              if k in fs[0] and k in pt[0]]
    if faults:
        print("\nminor page faults per training step (median): " + "; ".join(faults))


def time_gpu(args):
    """`time-gpu <n>`: see the module docstring; one JSON line with the keys of `peer_step gpu`."""
    device = setup(args)
    out = {"impl": "pytorch", "n": args.n, "device": device.type,
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    model, opt = make(device)
    step, teacher = cutmix_step(model, opt, data(256, device, CLASSES),
                                unlabeled(256, device))
    out["cutmix_b16_256_1stream"], _ = timed_steps(args.n, step, device)
    del model, opt, step, teacher
    torch.manual_seed(0)
    model = r50.ResNet50DeepLabV3Plus(CLASSES).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    step = train_step(model, opt, *data(512, device, CLASSES, batch=8))
    out["r50_sup_b8_512_1stream"], _ = timed_steps(args.n, step, device)
    out["params_r50"] = elements(model.parameters())
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("check")
    c.add_argument("dir")
    for name in ("time", "profile"):
        t = sub.add_parser(name)
        t.add_argument("n", type=int)
        t.add_argument("--threads", type=int, default=2)
        t.add_argument("--device", default="cpu", help="cpu, cuda or auto")
        t.add_argument("--init", help="flowseg's init.safetensors (from `peer_step export`)")
        t.add_argument("--init-r18", help="flowseg's resnet18_deeplabv3plus init.safetensors "
                       "(from `peer_step export` with the resnet overrides): also time its steps")
        t.add_argument("--compile", action="store_true",
                       help="time the steps through torch.compile (inductor)")
    g = sub.add_parser("time-gpu")
    g.add_argument("n", type=int)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    r = sub.add_parser("report")
    r.add_argument("jsonl")
    args = ap.parse_args()
    if args.mode == "check":
        torch.set_num_threads(2)
        return check(args)
    if args.mode == "time" and args.compile:
        # A compilation failure is a result too: one JSON line saying why.
        try:
            return time_all(args) or 0
        except Exception as e:  # noqa: BLE001 - any failure of the compiler stack
            print(json.dumps({"impl": "pytorch-compile", "error": f"{type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}"[:300]}))
            return 0
    return {"time": time_all, "time-gpu": time_gpu, "profile": profile,
            "report": report}[args.mode](args) or 0


if __name__ == "__main__":
    sys.exit(main())
