"""The training step: gradient isolation, K = 1 parity with plain end-to-end training, activation
checkpointing parity, memory falling with K, and the inference path."""

import copy

import pytest
import torch
import torch.nn.functional as F

import locallearn as ll
from locallearn.memory import SavedTensorMeter

from checks import assert_gradient_isolation


def batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def grads_of(params):
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]


@pytest.mark.parametrize(
    "options",
    [
        dict(method="greedy", num_modules=4, split="paper"),
        dict(method="dgl", num_modules=3, split="uniform"),
        dict(method="infopro", num_modules=4, split="paper"),
        dict(method="contsup", num_modules=4, context="R1E", split="paper"),
        dict(method="contsup", num_modules=4, context="R2", split="paper", reconstruct=True),
    ],
)
def test_each_module_loss_reaches_only_its_own_parts(options):
    net = ll.build("resnet32", dataset="cifar10", **options)
    x, y = batch()
    assert_gradient_isolation(net, x, y)


def test_module_parts_cover_every_parameter_exactly_once():
    net = ll.build("resnet32", method="contsup", num_modules=8, context="R2E", reconstruct=True, dataset="cifar10")
    seen = [id(p) for k in range(net.num_modules) for p in net.module_parameters(k)]
    assert len(seen) == len(set(seen)) == len(list(net.parameters()))


def test_k1_matches_plain_end_to_end_training():
    torch.manual_seed(3)
    net = ll.build("resnet20", method="e2e", dataset="cifar10")
    plain = copy.deepcopy(net.backbone)
    x, y = batch(8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    for _ in range(2):
        stats = ll.train_step(net, x, y, opt)
        opt_plain.zero_grad()
        loss = F.cross_entropy(plain(x), y)
        loss.backward()
        opt_plain.step()
        assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for (name, a), b in zip(net.backbone.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_activation_checkpointing_matches_end_to_end():
    torch.manual_seed(4)
    e2e = ll.build("resnet20", method="e2e", dataset="cifar10")
    ckpt = ll.build("resnet20", method="checkpoint", dataset="cifar10")
    ckpt.load_state_dict(e2e.state_dict())
    assert ckpt.activation_segments == 3  # ≈ √11 units
    assert ll.build("resnet20", method="checkpoint", activation_segments=11).activation_segments == 11
    with pytest.raises(ValueError, match=r"activation_segments: 12 segments of a module of 11 units; give at most 11 "
                                         r"\(default ≈ √11: 3\)"):  # it was 11, config.yaml saying 12
        ll.build("resnet20", method="checkpoint", activation_segments=12)
    x, y = batch(8)
    for net in (e2e, ckpt):
        ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.0))
    for (name, a), b in zip(e2e.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    # BatchNorm running statistics are updated once, not again during recomputation.
    for (name, a), b in zip(e2e.state_dict().items(), ckpt.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def step_peak(net, x, y):
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with SavedTensorMeter(net.parameters()) as meter:
        ll.train_step(net, x, y, opt)
    return meter.peak_bytes


def test_peak_saved_bytes_fall_as_k_grows():
    x, y = batch(4)
    peaks = []
    for K in (1, 2, 4, 8, 16):
        method = "e2e" if K == 1 else "contsup"
        net = ll.build("resnet32", method=method, num_modules=K, context="R0", dataset="cifar10")
        peaks.append(step_peak(net, x, y))
    assert all(a > b for a, b in zip(peaks, peaks[1:])), peaks
    assert peaks[0] / peaks[-1] > 4


def test_meter_counts_storages_once_and_frees_them():
    w = torch.randn(8, 8, requires_grad=True)
    with SavedTensorMeter([w]) as meter:
        a = torch.randn(4, 8)
        out = (a @ w).sum() + (a @ w).sum()  # `a` saved twice: counted once; w excluded
        assert meter.live_bytes == a.numel() * 4
        out.backward()
        del out
    assert meter.live_bytes == 0 and meter.peak_bytes == a.numel() * 4


def test_inference_runs_neither_heads_nor_decoders():
    net = ll.build("resnet32", method="infopro", num_modules=4, dataset="cifar10").eval()
    called = []
    for module in [part for o in net.objectives[:-1] for part in (o.head, o.image_decoder)]:
        module.register_forward_hook(lambda *a: called.append(1))
    logits = net(batch()[0])
    assert logits.shape == (4, 10) and not called


def test_loss_on_inference_output_reaches_only_the_last_module():
    net = ll.build("resnet32", method="contsup", num_modules=4, context="R1E", dataset="cifar10")
    x, y = batch()
    F.cross_entropy(net(x), y).backward()
    last = {id(p) for p in net.module_parameters(3)}
    for name, p in net.named_parameters():
        assert (p.grad is not None) == (id(p) in last and not name.startswith("objectives")), name


def test_inference_equals_the_training_path():
    net = ll.build("resnet32", method="contsup", num_modules=4, context="R2E", dataset="cifar10").eval()
    x, _ = batch()
    state = net.begin(x)
    h = x
    for k in range(4):
        h = net.module_forward(k, h)
        if k < 3:
            h = net.handoff(k, h, state)
    assert torch.allclose(net(x), h)


def test_training_learns_a_tiny_problem():
    torch.manual_seed(0)
    net = ll.build("resnet20", method="contsup", num_modules=3, split="uniform", context="R1E", dataset="cifar10")
    x, y = batch(16)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    first = ll.train_step(net, x, y, opt)
    for _ in range(15):
        last = ll.train_step(net, x, y, opt)
    assert last["loss/2"] < first["loss/2"] and set(first) >= {"loss", "loss/0", "acc/0", "acc/2"}


def test_bf16_autocast_step_runs():
    net = ll.build("resnet20", method="infopro", num_modules=2, split="uniform", dataset="cifar10")
    x, y = batch()
    stats = ll.train_step(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01), autocast_dtype=torch.bfloat16)
    assert all(v == v for v in stats.values())  # no NaN
    ll.train_step(net, x.bfloat16(), y, torch.optim.SGD(net.parameters(), lr=0.01), autocast_dtype=torch.bfloat16)
    # float64 images meet float32 weights in the first layer, which autocast leaves alone on the CPU: refused
    with pytest.raises(ValueError, match=r"^images are torch.float64 but the network computes in torch.float32"):
        ll.train_step(net, x.double(), y, torch.optim.SGD(net.parameters(), lr=0.01), autocast_dtype=torch.bfloat16)


def test_reconstruction_weights_follow_the_lambda_table():
    net = ll.build("resnet110", method="contsup", num_modules=4, context="R1E", reconstruct=True, dataset="stl10")
    assert net.lambda_schedule[0] == pytest.approx((20, 0.2)) and net.lambda_schedule[-1] == pytest.approx((5, 2))
    assert net.describe()["lambda_source"].startswith("table")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ll.build("resnet33"), "unknown model 'resnet33'; valid models: "),
        (lambda: ll.build("mycnn"), r"package.module:factory \(docs/custom-models.md\); a name given to register_model "
                                    r"is known only in the process that registered it\.$"),
        (lambda: ll.build("resnet32", method="infopr"), "unknown method 'infopr'; valid methods: "),
        (lambda: ll.build("resnet32", aux_head="2c2f"), "unknown auxiliary head '2c2f'; valid"),
        (lambda: ll.build("resnet32", local_loss="mse"), "unknown local loss 'mse'; valid"),
        (lambda: ll.build("resnet32", dataset="imagenet"), "unknown dataset 'imagenet'; valid"),
        (lambda: ll.build("resnet32", method="e2e", num_modules=4), "trains the network as one module"),
        (lambda: ll.build("resnet32", method="e2e", context="R1"), "no boundary to supply context R1 to; drop --context, "
                                                                    "or use a local method"),
        (lambda: ll.build("resnet32", num_module=4), "unknown option 'num_module'; valid options"),
        (lambda: ll.build("resnet32", reconstruct="False", dataset="cifar10"), "reconstruct must be true or false"),
        (lambda: ll.build("resnet32", method="e2e", activation_checkpointing="no"), "activation_checkpointing must be true or false"),
        (lambda: ll.build("resnet32", dataset="cifar10", image_size=48), "delivers 32×32 images"),
        (lambda: ll.build("resnet32", dataset="cifar100", num_classes=10), "has 100 classes"),
        (lambda: ll.build("resnet32", num_classes=1), "num_classes must be an integer from 2 to"),
        (lambda: ll.build("resnet32", dataset="cifar10", image_std=(0, 0, 0)), "image_std must be positive"),
        (lambda: ll.build("resnet32", image_mean=(1, 2)), "image_mean: expected three finite numbers"),
        (lambda: ll.build("resnet32", model_kwargs=[1]), "model_kwargs: expected a mapping"),
        (lambda: ll.build("resnet32", temperature="0.1"), "temperature must be a positive number"),
        (lambda: ll.build("swin_cifar", method="featrecon", feature_weight=-1), "feature_weight must be"),
        (lambda: ll.build("resnet32", lambdas=(1, 1, float("nan"), 1)), "lambdas must be four numbers"),
    ],
)
def test_bad_input_is_one_sentence(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def _step_parts():
    torch.manual_seed(0)
    net = ll.build("resnet20", method="greedy", num_modules=2, split="uniform")
    return net, torch.optim.SGD(net.parameters(), lr=0.1), torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda n, o, x, y: (n, o, x * float("nan"), y), r"^images: the batch holds NaN or infinite values"),
        (lambda n, o, x, y: (n, o, x, torch.tensor([0, 1, 2, 10])), r"^labels: the batch holds label 10 but the "
                                                                     r"network has 10 classes"),
        (lambda n, o, x, y: (n, o, x, y.float()), r"^labels must be an int64 \(or uint8\) tensor of class indices"),
        (lambda n, o, x, y: (n, o, x, torch.tensor([0, -1, 2, 3])), r"^labels: the batch holds label -1; labels are "
                                                                     r"class indices 0\.\.9, every image labelled\.$"),
        (lambda n, o, x, y: (n, o, x, y[None]), r"^labels must be an int64 \(or uint8\) tensor"),
        (lambda n, o, x, y: (n, o, x[:, :1], y), r"^images: 1 channels, but the network takes 3"),
        (lambda n, o, x, y: (n, o, (x * 100).to(torch.uint8), y), r"^images must be floating point \(normalised in "
                                                                   r"your loader\), got torch.uint8"),
        (lambda n, o, x, y: (n, o, x.double(), y), r"^images are torch.float64 but the network computes in torch.float32"),
        (lambda n, o, x, y: (n, o, x.numpy(), y), r"^images must be a torch tensor, got ndarray of shape"),
        (lambda n, o, x, y: (n, o, x[:0], y[:0]), r"^images: the batch is empty"),
        (lambda n, o, x, y: (n, o, x[..., :28, :28], y), r"^images: 28×28, but the network was built for 32×32 images "
                                                          r".*; resize them, or build it with image_size=28\.$"),
        (lambda n, o, x, y: (n, None, x, y), r"^optimizer: expected a torch.optim.Optimizer"),
        (lambda n, o, x, y: (torch.nn.Linear(2, 2), o, x, y), r"^net: expected a LocalNet"),
    ],
)
def test_train_step_refuses_bad_arguments_in_one_line_and_changes_nothing(change, message):
    net, optimizer, x, y = _step_parts()
    before = copy.deepcopy(net.state_dict())
    net_given, optimizer_given, images, labels = change(net, optimizer, x, y)
    with pytest.raises(ValueError, match=message) as err:
        ll.train_step(net_given, images, labels, optimizer_given)
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # weights and BatchNorm statistics


@pytest.mark.parametrize("options, words", [
    (dict(method="dgl"), r"BatchNorm1d at objectives\.0\.head"),
])
def test_a_batch_of_one_image_is_refused_where_the_network_needs_two_and_changes_nothing(options, words):
    """DGL's heads normalise features over the batch (BatchNorm1d): a batch of one (a DataLoader's last) failed
    deep in torch, after the modules before had stepped. The contrastive loss of one image is 0 with zero
    gradients, harmless: such a batch still trains."""
    torch.manual_seed(0)
    net = ll.build("resnet20", num_modules=2, split="uniform", image_size=16, **options)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=rf"^batch_size: .*{words}.*; give batches of 2 or more images \(a "
                                         rf"DataLoader's drop_last=True leaves out a last batch of one\)\.$"):
        ll.train_step(net, torch.randn(1, 3, 16, 16), torch.tensor([3]), optimizer)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for other in (dict(method="greedy"), dict(method="contsup", local_loss="contrast", context="R0")):
        net = ll.build("resnet20", num_modules=2, split="uniform", image_size=16, **other)
        ll.train_step(net, torch.randn(1, 3, 16, 16), torch.tensor([3]), torch.optim.SGD(net.parameters(), lr=0.1))


def test_uint8_labels_train_as_cross_entropy_takes_them():
    net, optimizer, x, y = _step_parts()
    assert torch.isfinite(ll.train_step(net, x, y.to(torch.uint8), optimizer)["loss"])


def test_a_non_finite_loss_stops_train_step_before_the_optimizer_step():
    from locallearn.engine import NonFiniteLossError

    net, _, x, y = _step_parts()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e30)
    ll.train_step(net, x, y, optimizer)  # finite, but it throws the weights far
    params = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss \(nan\) in module 0; the optimizer step was not "
                                                 r"taken"):
        ll.train_step(net, x, y, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(params, net.parameters()))
    assert all(p.grad is None for p in net.parameters())
    # the trainer's own step (checked=False) waits for nothing and takes the step: it checks every 32 steps
    stats = ll.train_step(net, x, y, optimizer, checked=False)
    assert not torch.isfinite(stats["loss"])


def test_a_nan_reconstruction_is_a_nan_loss_not_an_error():
    from locallearn.losses import reconstruction_bce

    image = torch.rand(2, 3, 4, 4)
    recon = torch.rand(2, 3, 4, 4, requires_grad=True)
    assert reconstruction_bce(recon, image) == F.binary_cross_entropy(recon, image)
    broken = recon.detach().clone()
    broken[0, 0, 0, 0] = float("nan")
    assert torch.isnan(reconstruction_bce(broken.requires_grad_(), image))
    with pytest.raises(RuntimeError):  # out of [0, 1] but not NaN: BCE's own error stands
        reconstruction_bce(recon.detach() + 2, image)


def test_reconstruct_takes_the_image_size_from_the_backbone():
    """Without a dataset or an image size, the backbone's own size is the reconstruction target's (the
    README's example)."""
    net = ll.build("resnet32", method="infopro", local_loss="ce")
    assert net.objectives[0].image_decoder.image_size == 32


def test_reconstruct_with_explicit_image_size():
    net = ll.build("resnet20", method="infopro", num_modules=2, split="uniform", image_size=32)
    assert net.objectives[0].image_decoder is not None


def _flat(inplace: bool) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=inplace),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=inplace),
        torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)),
    )


@pytest.mark.parametrize(
    "options, kept",
    [
        (dict(method="greedy"), None),
        (dict(method="infopro"), None),
        (dict(method="contsup", context="E"), None),  # module 1's input is not kept past its forward
        (dict(method="contsup", context="R1"), "ContSup's context for the next boundaries"),
        (dict(method="featrecon"), "feature reconstruction's target"),
    ],
)
def test_a_unit_that_writes_its_kept_input_in_place_is_refused_and_a_harmless_one_changes_nothing(options, kept):
    # units 2 and 5 (ReLU(inplace=True)) start modules 1 and 2: they overwrite the detached hand-off
    images, labels = batch(n=4, size=16)
    results = []
    for inplace in (False, True):
        net = ll.build(_flat(inplace), num_modules=3, split=[1, 4], image_size=16, **options)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        if inplace and kept:
            with pytest.raises(ValueError, match=rf"^unit 2 changes what it is given in place .* kept as {kept}; make"):
                ll.train_step(net, images, labels, optimizer)
            net.eval()
            if options.get("context") == "R1":  # inference keeps the context history too
                with pytest.raises(ValueError, match="unit 2 changes what it is given in place"), torch.no_grad():
                    net(images)
            with torch.inference_mode():  # no version counters to watch: it runs
                net(images)
            return
        metrics = ll.train_step(net, images, labels, optimizer)
        results.append({k: v.item() for k, v in metrics.items()})
    assert results[0] == results[1]


def test_the_unit_that_writes_a_kept_input_is_the_one_named_and_inference_mode_runs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(  # unit 3 passes its input through; unit 4 writes it
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.Identity(), torch.nn.ReLU(inplace=True),
        torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)),
    )
    net = ll.build(model, method="contsup", context="R1", num_modules=4, split=[0, 2, 4], image_size=16)
    images, labels = batch(n=4, size=16)
    with pytest.raises(ValueError, match=r"^unit 4 changes what it is given in place"):
        ll.train_step(net, images, labels, torch.optim.SGD(net.parameters(), lr=0.1))
    for method, options in (("contsup", dict(context="R1E")), ("infopro", {}), ("featrecon", {})):
        default = ll.build("resnet20", method=method, num_modules=2, dataset="cifar10", **options).eval()
        with torch.inference_mode():
            assert default(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_an_optimizer_of_the_models_parameters_is_refused_naming_the_fix():
    model = _flat(False)
    net = ll.build(model, method="greedy", num_modules=3, split=[1, 4], image_size=16)
    images, labels = batch(n=4, size=16)
    with pytest.raises(ValueError, match=r"^optimizer: it does not hold \d+ trainable parameter\(s\) of module 0 "
                                         r"\(its units, objective or context encoders\); build it from "
                                         r"net.parameters\(\)"):
        ll.train_step(net, images, labels, torch.optim.SGD(model.parameters(), lr=0.1))  # the heads are not in it
    for p in net.objectives[0].parameters():
        p.requires_grad_(False)  # frozen parameters need not be held
    ll.train_step(net, images, labels, torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1))


def test_inference_on_images_of_another_shape_is_one_line():
    """net(x) with the wrong channels or size was the error of whichever layer met it first (a context
    encoder's sum, a convolution's channels)."""
    net = ll.build("resnet20", method="contsup", num_modules=2, split="uniform", context="R1E").eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        for x, words in ((torch.zeros(2, 3, 28, 28), r"images: 3×28×28 \(channels × height × width\), but the network "
                                                     "was built for 3×32×32"),
                         (torch.zeros(2, 1, 32, 32), "images: 1×32×32"),
                         (torch.zeros(3, 32, 32), r"expected a \(batch, channels, height, width\) tensor, got \(3, 32, 32\)")):
            with pytest.raises(ValueError, match=words) as err:
                net(x)
            assert "\n" not in str(err.value)


def test_timing_the_modules_changes_nothing_a_run_computes():
    """engine.time_modules (what the pipeline balances its stages on) runs training passes: weights, BatchNorm
    statistics, gradients, the random generator and every submodule's mode are as they were afterwards."""
    from locallearn.engine import time_modules

    net, _, x, y = _step_parts()
    net.eval()
    net.backbone.units[0].train()  # modes of the user's own, kept module by module
    modes = [m.training for m in net.modules()]
    state = copy.deepcopy(net.state_dict())
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    times = time_modules(net, x, y, repeats=1)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and [m.training for m in net.modules()] == modes
