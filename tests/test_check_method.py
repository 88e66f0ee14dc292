"""``dabench.testing.check_method``: every registered method passes; broken ones are caught, by name."""

from __future__ import annotations

import pathlib
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dabench
from dabench import Batch, Loss, Method, Uses, register_method
from dabench.methods.dann import DANN, grad_reverse
from dabench.testing import check_method, isolated_registries

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated():
    with isolated_registries():
        yield


@pytest.mark.parametrize("name", dabench.list_methods())
def test_every_registered_method_passes(name):
    report = check_method(name)
    assert report.method == name
    assert report.trained, "something must train"
    assert set(report.hparams_checked) == {
        k for k, v in dabench.METHODS.get(name).hparam_defaults().items() if v is not None
    }
    if report.loss is not None:  # step-loop methods
        assert report.loss > 0


def test_linear_probe_trains_only_its_head():
    report = check_method("linear-probe")
    assert report.trained == ["net.head.weight", "net.head.bias"]
    assert any(n.startswith("net.backbone") for n in report.frozen)


def test_the_example_plugins_pass():
    from dabench.core.registry import load_plugin

    examples = pathlib.Path(__file__).resolve().parents[1] / "examples"
    load_plugin(str(examples / "dabench-mcc" / "dabench_mcc.py"))
    load_plugin(str(examples / "entmin.py"))
    report = check_method("mcc")
    assert report.hparams_checked == ["bottleneck_dim", "trade_off", "temperature", "forward"]
    assert report.hparams_used == ["bottleneck_dim", "trade_off", "temperature"]
    assert check_method("entmin").hparams_used == ["bottleneck_dim", "trade_off"]


def test_every_numeric_hyperparameter_of_the_builtins_is_shown_used():
    assert check_method("dann").hparams_used == ["bottleneck_dim", "trade_off", "disc_hidden", "grl_gamma"]
    assert check_method("fine-tune").hparams_used == ["bottleneck_dim", "lr_scale", "steps_fraction"]


# --- ignored hyperparameters ----------------------------------------------------------------------
def _entropy(logits):
    p = logits.float().softmax(1)
    return -(p * p.clamp_min(1e-12).log()).sum(1).mean()


def test_hard_coded_trade_off_is_caught_and_names_the_declaration():
    @register_method("broken-tradeoff")
    class HardCoded(Method):
        """Entropy minimisation whose loss hard-codes the trade-off it declares."""

        uses = Uses(source_labels=True, target_unlabeled=True)
        defaults = {"trade_off": 0.3, "forward": "concat"}

        def loss(self, batch, progress):
            logits_s, logits_t, _, _ = self.forward_source_target(batch)
            return self.combine(self.supervised_loss(batch, logits_s), _entropy(logits_t), 0.3)

    _expect(
        HardCoded,
        "broken-tradeoff",
        "hyperparameter 'trade_off' is ignored",
        "from 0.3 to 0.15",
        "self.hp['trade_off']",
        "hparams_outside_loss = ('trade_off',)",
    )


def test_unused_temperature_is_caught_unless_declared_inert():
    @register_method("broken-temperature")
    class NoTemperature(Method):
        """Entropy minimisation declaring a temperature it never reads."""

        uses = Uses(source_labels=True, target_unlabeled=True)
        defaults = {"trade_off": 1.0, "temperature": 2.0, "warmup_steps": 3}

        def loss(self, batch, progress):
            logits_s, logits_t, _, _ = self.forward_source_target(batch)
            return self.combine(self.supervised_loss(batch, logits_s), _entropy(logits_t), self.hp["trade_off"])

    _expect(NoTemperature, "hyperparameter 'temperature' is ignored")
    # declared inert (e.g. read only by fit, or only logged): passes, and is not counted as used
    report = check_method(NoTemperature, allow_unused_hparams=("temperature", "warmup_steps"))
    assert report.hparams_used == ["bottleneck_dim", "trade_off"]
    NoTemperature.hparams_outside_loss = ("temperature", "warmup_steps")
    assert check_method(NoTemperature).hparams_used == ["bottleneck_dim", "trade_off"]
    NoTemperature.hparams_outside_loss = ("temprature",)
    _expect(NoTemperature, "name ['temprature'], which are not hyperparameters", "temperature")


def test_a_hyperparameter_acting_only_late_in_training_is_found():
    """A switch at progress 0.8 has no effect at 0.5: the 0.9 probe finds it."""

    @register_method("late-switch")
    class Late(Method):
        """Entropy minimisation switched on only after ``start`` of training."""

        uses = Uses(source_labels=True, target_unlabeled=True)
        defaults = {"trade_off": 1.0, "start": 0.8}

        def loss(self, batch, progress):
            logits_s, logits_t, _, _ = self.forward_source_target(batch)
            weight = self.hp["trade_off"] if progress >= self.hp["start"] else 0.0
            return self.combine(self.supervised_loss(batch, logits_s), _entropy(logits_t), weight)

    assert check_method(Late).hparams_used == ["bottleneck_dim", "trade_off", "start"]


# --- broken methods: each must fail with a message that says what is wrong ----------------------
def _expect(cls, *fragments):
    with pytest.raises(AssertionError) as err:
        check_method(cls)
    for f in fragments:
        assert f in str(err.value), str(err.value)


def test_detached_features_in_the_adaptation_loss_are_caught():
    @register_method("broken-detach")
    class DetachedDANN(DANN):
        """DANN whose discriminator sees detached features: trains as source-only."""

        def loss(self, batch, progress):
            logits_s, _, f_s, f_t = self.forward_source_target(batch)
            d = self.discriminator(grad_reverse(torch.cat([f_s, f_t]).detach(), 1.0))
            labels = torch.cat([torch.ones(len(f_s)), torch.zeros(len(f_t))])
            return self.combine(
                self.supervised_loss(batch, logits_s),
                F.binary_cross_entropy_with_logits(d, labels),
                self.hp["trade_off"],
            )

    _expect(DetachedDANN, "broken-detach", "parts['da'] sends no gradient to the feature extractor")


def test_softmax_over_one_output_discriminator_is_caught():
    """The known pitfall: softmax over a single logit is constant 1, so nothing is reversed."""

    @register_method("broken-softmax1")
    class Softmax1DANN(DANN):
        """DANN with a one-output softmax discriminator."""

        def loss(self, batch, progress):
            logits_s, _, f_s, f_t = self.forward_source_target(batch)
            d = self.discriminator(grad_reverse(torch.cat([f_s, f_t]), 1.0)).unsqueeze(1).softmax(1)[:, 0]
            labels = torch.cat([torch.ones(len(f_s)), torch.zeros(len(f_t))])
            adv = F.binary_cross_entropy(d.clamp(1e-6, 1 - 1e-6), labels)
            return self.combine(self.supervised_loss(batch, logits_s), adv, self.hp["trade_off"])

    _expect(Softmax1DANN, "no gradient to the feature extractor")


def test_fully_detached_loss_is_caught():
    @register_method("broken-nograd")
    class NoGrad(Method):
        """Cross-entropy on detached logits."""

        def loss(self, batch, progress):
            return self.combine({"ce": F.cross_entropy(self.predict(batch.x_source).detach(), batch.y_source)})

    _expect(NoGrad, "broken-nograd", "total loss has no gradient")


def test_module_left_out_of_param_groups_is_caught():
    @register_method("broken-groups")
    class ForgottenHead(Method):
        """Adds an auxiliary head but hands only the classifier to the optimiser."""

        uses = Uses(source_labels=True, target_unlabeled=True)
        defaults = {"trade_off": 1.0}

        def build(self, backbone, num_classes):
            super().build(backbone, num_classes)
            self.aux = nn.Linear(int(self.hp["bottleneck_dim"]), 2)

        def param_groups(self):
            return [{"params": list(self.net.parameters()), "lr_mult": 1.0}]

        def loss(self, batch, progress):
            logits_s, _, f_s, f_t = self.forward_source_target(batch)
            da = self.aux(torch.cat([f_s, f_t])).pow(2).mean()
            return self.combine(self.supervised_loss(batch, logits_s), da, self.hp["trade_off"])

    _expect(ForgottenHead, "in no param group", "aux.weight")


def test_unused_trainable_parameter_is_caught_unless_allowed():
    @register_method("broken-unused")
    class Unused(Method):
        """Source-only with a projection it never uses."""

        def build(self, backbone, num_classes):
            super().build(backbone, num_classes)
            self.proj = nn.Linear(4, 4)

        def loss(self, batch, progress):
            return self.combine(self.supervised_loss(batch, self.predict(batch.x_source)))

    _expect(Unused, "get no gradient", "proj.weight")
    report = check_method(Unused, allow_no_grad=("proj.",))  # declared as intended
    assert "proj.weight" not in report.trained


def test_python_random_breaks_determinism():
    @register_method("broken-random")
    class Jittery(Method):
        """Scales the loss by a draw from Python's random module (ignores torch's seed)."""

        def loss(self, batch, progress):
            ce = F.cross_entropy(self.predict(batch.x_source), batch.y_source)
            return self.combine({"ce": ce * (1 + random.random())})

    _expect(Jittery, "not deterministic under a seed")


@pytest.mark.parametrize("reseed", ["torch.manual_seed(0)", "random.seed(0)", "np.random.seed(0)"])
def test_a_step_that_reseeds_a_global_rng_is_caught(reseed):
    """Deterministic, so the determinism check passes; but every seed of a run would draw alike."""
    import numpy as np

    @register_method("broken-reseed")
    class Reseeding(Method):
        """Noise on the source logits from a reseeded RNG (a copied 'reproducibility' line)."""

        defaults = {"noise": 0.1}

        def loss(self, batch, progress):
            eval(reseed, {"torch": torch, "random": random, "np": np})
            logits = self.predict(batch.x_source)
            noise = torch.rand_like(logits) * float(self.hp["noise"])
            return self.combine({"ce": F.cross_entropy(logits + noise, batch.y_source)})

    _expect(Reseeding, "reseeds", reseed.split("(")[0], "not be independent")


def test_module_created_in_loss_breaks_the_state_dict_round_trip():
    @register_method("broken-lazy")
    class Lazy(Method):
        """Creates its extra layer on the first loss call."""

        def loss(self, batch, progress):
            if not hasattr(self, "extra"):
                self.extra = nn.Linear(self.num_classes, self.num_classes)
            logits = self.extra(self.predict(batch.x_source))
            return self.combine({"ce": F.cross_entropy(logits, batch.y_source)})

    _expect(Lazy, "broken-lazy", "does not load into a fresh build", "Create every module in build()")


def test_wrong_predict_shape_is_caught():
    @register_method("broken-predict")
    class Features(Method):
        """predict returns features instead of logits."""

        def loss(self, batch, progress):
            return self.combine(self.supervised_loss(batch, self.net(batch.x_source)[0]))

        def predict(self, x):
            return self.net.features(x)

    _expect(Features, "predict(x) must return logits of shape [batch, num_classes] = [5, 10]")


def test_unregistered_and_incomplete_classes():
    class Anonymous(Method):
        """Never registered."""

        def loss(self, batch: Batch, progress: float) -> Loss:
            return self.combine(self.supervised_loss(batch, self.predict(batch.x_source)))

    # registered on the fly under its lower-cased class name, as dabench.run(methods=[Anonymous]) does
    report = check_method(Anonymous)
    assert report.method == "anonymous" and dabench.METHODS.get("anonymous") is Anonymous

    class Taken(Anonymous):
        """Claims a built-in's name."""

        name = "dann"

    _expect(Taken, "'dann' is registered twice")

    class NoLoss(Method):
        """Forgot its loss."""

    _expect(NoLoss, "NoLoss is incomplete", "implement loss(batch, progress)")
    with pytest.raises(AssertionError, match="unknown method 'nope'"):
        check_method("nope")


def _mmd_loss(method: Method, batch: Batch, trade_off_key: str) -> Loss:
    logits_s, _, f_s, f_t = method.forward_source_target(batch)
    da = (f_s.mean(0) - f_t.mean(0)).pow(2).sum()
    return method.combine(method.supervised_loss(batch, logits_s), da, float(method.hp[trade_off_key]))


def test_hyperparameter_misspelt_in_defaults_names_the_method_and_the_near_name():
    """defaults say "trade_of", loss reads "trade_off": one message with the method, the near name and the fix
    (was a bare KeyError: 'trade_off' from check_method and in the failed run's record)."""

    @register_method("typo-hp")
    class TypoHP(Method):
        """Linear MMD with a misspelt default (test)."""

        uses = Uses(source_labels=True, target_unlabeled=True)
        defaults = {"trade_of": 1.0}

        def loss(self, batch, progress):
            return _mmd_loss(self, batch, "trade_off")

    with pytest.raises(KeyError) as info:
        check_method("typo-hp")
    msg = str(info.value)
    assert msg.startswith("method 'typo-hp' reads self.hp['trade_off']")
    assert "did you mean 'trade_of'?" in msg and "bottleneck_dim=256, trade_of=1.0" in msg
    assert "Add 'trade_off' to the class's defaults" in msg


def test_init_without_super_init_is_named_at_construction():
    """was: AttributeError: 'NoSuper' object has no attribute '_modules' deep in the engine."""

    @register_method("no-super-init")
    class NoSuper(Method):
        """Forgets super().__init__ (test)."""

        uses = Uses(source_labels=True, target_unlabeled=True)
        defaults = {"trade_off": 1.0}

        def __init__(self, backbone, num_classes, hparams=None):
            self.extra = 3

        def loss(self, batch, progress):
            return _mmd_loss(self, batch, "trade_off")

    with pytest.raises(
        TypeError,
        match=r"method 'no-super-init': .*NoSuper.__init__ \(.*test_check_method.py:\d+\) "
        r"did not call super\(\).__init__\(backbone, num_classes, hparams\)",
    ):
        check_method("no-super-init")

    class Fine(NoSuper):  # a subclass whose __init__ does call it is untouched by the check
        """Calls Method.__init__ (test)."""

        def __init__(self, backbone, num_classes, hparams=None):
            Method.__init__(self, backbone, num_classes, hparams)
            self.extra = 4

    assert check_method(Fine).method == "fine"


def test_build_without_super_build_is_named():
    """was: AttributeError: 'NoNet' object has no attribute 'backbone' (a property reading self.net)."""

    @register_method("no-super-build")
    class NoNet(Method):
        """build() forgets super().build (test)."""

        uses = Uses(source_labels=True, target_unlabeled=True)
        defaults = {"trade_off": 1.0}

        def build(self, backbone, num_classes):
            self.extra_head = nn.Linear(4, num_classes)

        def loss(self, batch, progress):
            return _mmd_loss(self, batch, "trade_off")

    with pytest.raises(
        TypeError,
        match=r"method 'no-super-build': build\(\) \(.*test_check_method.py:\d+\) did not "
        r"create self.net; call super\(\).build\(backbone, num_classes\) first",
    ):
        check_method("no-super-build")


# --- target shots ---------------------------------------------------------------------------------
class _IgnoresShots(Method):
    """Entropy minimisation whose loss takes the source cross-entropy itself, never the shots'."""

    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0}

    def loss(self, batch, progress):
        logits_s, logits_t, _, _ = self.forward_source_target(batch)
        return self.combine({"ce": F.cross_entropy(logits_s, batch.y_source)}, _entropy(logits_t), self.hp["trade_off"])


def test_a_uda_plugin_accepting_shots_that_ignores_their_labels_is_caught():
    """Given <method>.target_shots it would be tabled as a few-shot row trained on no label."""
    register_method("ignores-shots")(_IgnoresShots)
    _expect(
        _IgnoresShots,
        "ignores-shots: the target shots' labels do not change its step's losses",
        "accepts_target_shots is True",
        "batch.x_shots / batch.y_shots as supervised_loss does",
        "accepts_target_shots = False",
    )


def test_a_uda_plugin_that_declares_it_refuses_shots_passes():
    class Refuses(_IgnoresShots):
        """The same, declaring that it never trains on target shots."""

        accepts_target_shots = False

    register_method("refuses-shots")(Refuses)
    assert check_method(Refuses).method == "refuses-shots"


def test_a_few_shot_plugin_that_ignores_its_shots_labels_is_caught():
    @register_method("few-shot-blind")
    class Blind(Method):
        """Few-shot in name: trains the head to match its own predictions on the shots."""

        protocol = "few-shot"
        uses = Uses(target_shots=True)

        def loss(self, batch, progress):
            logits = self.predict(batch.x_shots)
            return self.combine({"ce_shots": F.cross_entropy(logits, logits.argmax(1))})

    _expect(Blind, "few-shot-blind: the target shots' labels do not change", "is a few-shot method")


class _OwnFit(Method):
    """UDA in name; its own fit() takes one SGD step on a source batch (and, with ``use_shots``, the shots)."""

    uses = Uses(source_labels=True, target_unlabeled=True)
    use_shots = False

    def loss(self, batch, progress):
        return self.combine(self.supervised_loss(batch, self.net(batch.x_source)[0]))

    def fit(self, ctx):
        x, y = ctx.data.batch_from(ctx.data.source, torch.arange(8))
        self.train()
        loss = F.cross_entropy(self.predict(x), y)
        if self.use_shots and len(ctx.data.shots):
            xs, ys = ctx.data.batch_from(ctx.data.shots, torch.arange(len(ctx.data.shots)))
            loss = loss + F.cross_entropy(self.predict(xs), ys)
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_uda_plugin_with_its_own_fit_that_ignores_the_shots_is_caught():
    register_method("own-fit")(_OwnFit)
    _expect(_OwnFit, "own-fit: its fit() trains the same weights whatever the target shots' labels", "ctx.data.shots")

    class Reads(_OwnFit):
        """The same, training on the shots too."""

        use_shots = True

    register_method("own-fit-shots")(Reads)
    assert check_method(Reads).method == "own-fit-shots"
