"""Every named training method, one registration each: attack x loss x schedule (docs/methods.md).

Costs are in example-passes per example and minibatch (forward+backward = 1, forward only 1/3).
"""

from __future__ import annotations

from .compose import ReplayStart, define, replay_minibatch
from .gaat import RECONSTRUCTION, GAATAttack
from .inputs import Ascent, Clean, NoiseFGSM
from .losses import MART, TRADES
from .mplus import MPlus
from .strength import EveryD, Linear, OnAccuracy, Schedule, level_param


def steps(default: int, help: str = "K, the number of attack steps") -> Schedule:
    return Schedule(level_param("steps", default, help))


define("natural", "Standard training on clean images (no attack); the cost and robustness floor. Cost 1.",
       attack=Clean(), schedule=Schedule(value=0), alpha=1.0, selects_by="clean")

# ---- PGD-AT and its accelerations ---------------------------------------------------------------
define("pgd", "PGD-K adversarial training (Madry et al. 2018): K attack steps from a uniform random start, then "
       "one weight step on CE. Cost K+1.", attack=Ascent(), schedule=steps(10))
define("fgsm-rs", "Fast-AT (Wong et al. 2020): one FGSM step of size alpha (default 1.25 eps) from a uniform random "
       "start. Cost 2.", attack=Ascent(), schedule=Schedule(value=1), alpha=1.25)
define("n-fgsm", "N-FGSM (de Jorge et al. 2022): a uniform random start of radius noise x eps (2 eps), one step of "
       "size alpha (default eps), no projection back to the eps-ball. Cost 2.",
       attack=NoiseFGSM(), schedule=Schedule(value=1), alpha=1.0)
define("fat", "FAT, friendly adversarial training (Zhang et al. 2020): PGD-K (model in eval mode) that stops, per "
       "example, tau steps after the example is first misclassified (a stopped example is charged nothing more). "
       "Cost (attack passes spent) + 1 <= K+1.",
       attack=Ascent(early_stop=True, attack_eval=True), schedule=steps(10, "K, the most attack steps"))
define("amata", "Amata (Ye et al. 2021): PGD-AT from x (zero start, as the reference) whose step count grows "
       "linearly from k_min in the first epoch to k_max in the last, with step max(step_scale eps/K, alpha). "
       "Cost K_t+1.", attack=Ascent(start="zero"), schedule=Linear())
define("mpgd", "M+PGD (DEAT paper): PGD-AT whose K follows the M+ rule on the input-gradient magnitude of the "
       "attack's last step, with the reach floor (K also rises while alpha K < eps) and a constant step alpha; "
       "K = 0 trains on the uniform random start. Cost K+1 per example in each epoch.",
       attack=Ascent(), schedule=MPlus("K", start=0, maximum=7))
define("gaat", "GAAT (Gong et al. 2023), fastrobust's reconstruction from the abstract: PGD-K whose input gradient is "
       "the gradient of a first- (or second-) order Taylor partial sum of the adversarial loss around the last true "
       "gradient; a forward every check_every steps measures the partial sum's relative remainder, and only "
       "examples whose remainder exceeds tau pay for a new true gradient. Cost 1 + 1/3 per check + the refreshes "
       "+ 1 (weight step). " + RECONSTRUCTION, attack=GAATAttack(), schedule=steps(10, "K, the attack's step budget"))
define("mgaat", "M+GAAT: GAAT whose step budget K follows the M+ rule (as M+PGD: reach floor, constant step, "
       "K from 0) on the magnitude of the attack's last (approximated) gradient. " + RECONSTRUCTION,
       attack=GAATAttack(), schedule=MPlus("K", start=0, maximum=10))

# ---- TRADES and MART ----------------------------------------------------------------------------
TRADES_ATTACK = dict(objective="kl", start="normal", attack_eval=True)
define("trades", "TRADES (Zhang et al. 2019): K signed steps maximising KL(f(x) || f(x+delta)) from 0.001 N(0,1) "
       "(model in eval mode), then one weight step on CE(f(x), y) + beta KL(f(x) || f(x_adv)). Cost K + 2 + 1/3.",
       attack=Ascent(**TRADES_ATTACK), loss=TRADES(), schedule=steps(10))
define("mtrades", "M+TRADES: TRADES whose K follows the M+ rule (reach floor, constant step, K from 0; MG of the "
       "KL attack's last step on the epoch's last minibatch, as the paper's code). Cost K + 2 (+1/3 when K > 0).",
       attack=Ascent(**TRADES_ATTACK), loss=TRADES(), schedule=MPlus("K", start=0, maximum=10, mg_batches="last"))
define("f-trades", "F+TRADES: TRADES whose KL attack stops FAT's way (tau steps after an example is first "
       "misclassified). Cost <= K + 2 + 1/3.", attack=Ascent(**TRADES_ATTACK, early_stop=True), loss=TRADES(),
       schedule=steps(10, "K, the most attack steps"))
define("mart", "MART (Wang et al. 2020): PGD-K on CE (uniform start, model in eval mode), then one weight step on "
       "the boosted CE of x_adv + beta KL(p(x) || p(x_adv)) (1 - p_y(x)). Cost K+2.",
       attack=Ascent(attack_eval=True), loss=MART(), schedule=steps(10))
define("mmart", "M+MART: MART whose K follows the M+ rule (reach floor, constant step, K from 0: the uniform start; "
       "MG of the epoch's last minibatch, as the paper's code). Cost K+2.",
       attack=Ascent(attack_eval=True), loss=MART(), schedule=MPlus("K", start=0, maximum=10, mg_batches="last"))
define("f-mart", "F+MART: MART whose PGD stops FAT's way (tau steps after an example is first misclassified). "
       "Cost <= K+2.", attack=Ascent(attack_eval=True, early_stop=True), loss=MART(),
       schedule=steps(10, "K, the most attack steps"))

# ---- replay methods: Free and DEAT --------------------------------------------------------------
define("free", "Free-m (Shafahi et al. 2019): each minibatch is replayed m times; every replay is one forward/backward "
       "giving both the weight step and the delta step (size alpha, default eps); delta carried across minibatches "
       "(--start uniform: a fresh random start per minibatch, Free-m of the DEAT table). Cost m per epoch "
       "(the original divides the epoch count by m: pass --epochs accordingly).",
       attack=ReplayStart("carry"), schedule=Schedule(level_param("replays", 4, "m, the number of replays of each "
                                                                   "minibatch"), level="r"), alpha=1.0, minibatch=replay_minibatch)
define("deat-d", "DEAT-d (dynamic efficient AT): Free-style replay of each minibatch r times from a fresh uniform "
       "delta (by default), with r_t = min(floor(t/d)+1, r_max) in epoch t. Cost r_t per example in epoch t.",
       attack=ReplayStart(), schedule=EveryD(), alpha=1.25, minibatch=replay_minibatch)
define("deat-p", "DEAT-p: Free-style replay of each minibatch r times from a fresh uniform delta (by default); r starts "
       "at 1 and rises by one after each epoch whose training accuracy on the last replay's inputs exceeds p, up to "
       "r_max. Cost r per example.", attack=ReplayStart(), schedule=OnAccuracy(), alpha=1.25, minibatch=replay_minibatch)
define("mdeat", "M+DEAT (DEAT's main method): Free-style replay of each minibatch r times from a fresh uniform delta "
       "(by default); r grows by the M+ rule on the last replay's input-gradient magnitude, with a constant step "
       "(default 1.25 eps, the paper's 10/255). Cost r per example in each epoch.",
       attack=ReplayStart(), schedule=MPlus("r", start=1, maximum=8, floor=False), alpha=1.25, minibatch=replay_minibatch)

# ---- the FastAT Benchmark's leaders: each a Method of its own (methods/leaders.py says why each does not compose)
from . import leaders  # noqa: E402
from .registry import register_method  # noqa: E402

register_method(leaders.GradAlign)
register_method(leaders.ZeroGrad)
register_method(leaders.NuAT)
register_method(leaders.GAT)
register_method(leaders.FGSMRSCS)
register_method(leaders.LIET)
register_method(leaders.FGSMUAP)
register_method(leaders.FGSMCUAP)
register_method(leaders.FGSMFUAP)   # a head on the model's penultimate features picks the perturbation
register_method(leaders.FGSMPGI)   # per-example state: Batch.index, which the engine's loader gives
register_method(leaders.FGSMPCO)
register_method(leaders.FGSMMEPCS)
register_method(leaders.NAAER)
register_method(leaders.RSAAER)
register_method(leaders.ELLE)
register_method(leaders.SSAT)

# ---- YOPO (a baseline of the DEAT paper's table): the gradient at the model's first layer drives its attack
from . import yopo  # noqa: E402

register_method(yopo.YOPO)
