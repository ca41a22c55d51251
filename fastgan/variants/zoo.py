"""The registered variants."""
from fastgan.variants.objective import Objective
from fastgan.variants.registry import GanSpec, OptimSpec, register


@register
def dcgan() -> GanSpec:
    return GanSpec("dcgan", "DCGAN, non-saturating loss, Adam(2e-4, β=(0.5, 0.999))", "dcgan",
                   Objective("nonsat"), paper="Radford et al. 2016")


@register
def dcgan_minimax() -> GanSpec:
    return GanSpec("dcgan-minimax", "DCGAN with the original minimax G loss log(1 - D(G(z)))", "dcgan",
                   Objective("minimax"), paper="Goodfellow et al. 2014")


@register
def lsgan() -> GanSpec:
    return GanSpec("lsgan", "DCGAN architecture, least-squares loss", "dcgan",
                   Objective("lsgan"), paper="Mao et al. 2017")


@register
def hinge() -> GanSpec:
    return GanSpec("hinge", "DCGAN architecture, hinge loss", "dcgan",
                   Objective("hinge"), paper="Lim & Ye 2017; Miyato et al. 2018")


@register
def wgan() -> GanSpec:
    return GanSpec("wgan", "Wasserstein GAN, weight clipping 0.01, 5 critic steps, RMSprop(5e-5)", "dcgan",
                   Objective("wasserstein"), OptimSpec("rmsprop", 5e-5, 5e-5), n_critic=5, clip=0.01,
                   paper="Arjovsky et al. 2017")


@register
def wgan_gp() -> GanSpec:
    return GanSpec("wgan-gp", "WGAN-GP: λ=10 gradient penalty, 5 critic steps, instance-norm critic, Adam(1e-4, β=(0, 0.9))",
                   "dcgan", Objective("wasserstein", "wgan-gp", 10.0), OptimSpec("adam", 1e-4, 1e-4, (0.0, 0.9)),
                   n_critic=5, model={"d_norm": "instance"}, paper="Gulrajani et al. 2017")


@register
def dcgan_r1() -> GanSpec:
    return GanSpec("dcgan-r1", "DCGAN, non-saturating loss + lazy R1 (γ=0.1, every 16 D steps), instance-norm D",
                   "dcgan", Objective("nonsat", "r1", 0.1, penalty_every=16), model={"d_norm": "instance"},
                   paper="Mescheder et al. 2018; Karras et al. 2020")


# -- conditional (labels from the dataset; sampling takes labels=) ------------------------------------------
@register
def cgan() -> GanSpec:
    return GanSpec("cgan", "conditional GAN: label embedding joined to G's latent and to D's input (an extra channel)",
                   "conditional", Objective("nonsat"), model={"d_kind": "concat"}, task="conditional",
                   paper="Mirza & Osindero 2014")


@register
def acgan() -> GanSpec:
    return GanSpec("acgan", "AC-GAN: D scores realness and classifies (auxiliary head on the shared trunk)",
                   "conditional", Objective("nonsat"), model={"d_kind": "acgan"}, task="conditional",
                   options={"aux_weight": 1.0}, paper="Odena et al. 2017")


@register
def projection() -> GanSpec:
    return GanSpec("projection", "projection discriminator: realness ψ(φ(x)) + class match ⟨embed(y), φ(x)⟩, hinge "
                   "loss, Adam(2e-4, β=(0, 0.9))", "conditional", Objective("hinge"),
                   OptimSpec("adam", 2e-4, 2e-4, (0.0, 0.9)), model={"d_kind": "projection"}, task="conditional",
                   paper="Miyato & Koyama 2018")


@register
def infogan() -> GanSpec:
    return GanSpec("infogan", "InfoGAN: a 10-way categorical and 2 continuous codes beside 62 uniform noise "
                   "dims, a Q head on D's trunk (unit-variance Gaussian for the continuous codes), λ=1 mutual "
                   "information on G and Q; Adam(G 1e-3, D 2e-4)", "infogan", Objective("nonsat"),
                   OptimSpec("adam", 1e-3, 2e-4, (0.5, 0.999)), task="infogan",
                   options={"info_weight": 1.0, "cont_weight": 1.0, "learned_std": False, "z_prior": "uniform"},
                   paper="Chen et al. 2016")
