"""Random-weight MusicGen checkpoints of named shapes, with an offline tokenizer, for benchmarks and tests.

Real weights cannot be downloaded everywhere (CI, air-gapped GPU boxes), yet speed and behaviour must be measured on
the real code path. `build_random_musicgen` makes a `MusicgenForConditionalGeneration` with the exact layout of the
published checkpoints (T5 text encoder, 32 kHz EnCodec, decoder) at the real musicgen-small/-medium/-large sizes, or
at a tiny size that runs in milliseconds on a CPU; `save_random_musicgen` writes one to a folder that
`from_pretrained` loads like any checkpoint. `melody=True` makes a MusicGen-Melody checkpoint instead (the
facebook/musicgen-melody layout: chroma and text in front of the decoded tokens), with its feature-extractor
settings.
"""

import json
import math
import pathlib
from dataclasses import dataclass
from typing import Any, cast

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    EncodecConfig,
    EncodecModel,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

from musicgen_api.audio.chroma import ChromaSettings
from musicgen_api.audio.mbd_checkpoint import BandCheckpoint, MBDCheckpoint

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2 as in T5
SAMPLING_RATE = 32_000
UPSAMPLING_RATIOS = [8, 5, 4, 4]  # hop 640 samples: 50 code frames per second
FRAME_RATE = SAMPLING_RATE // math.prod(UPSAMPLING_RATIOS)
CODEBOOKS_PER_CHANNEL = 4


@dataclass(frozen=True)
class Shape:
    text_dim: int  # T5 d_model (t5-base: 768)
    text_layers: int
    text_heads: int
    text_ff: int
    text_vocab: int
    codec_filters: int  # EnCodec num_filters (32 kHz model: 64)
    codec_hidden: int  # EnCodec hidden size = codebook dim (128)
    codec_lstm_layers: int
    codebook_size: int  # 2048 in every published model
    dim: int  # decoder width
    layers: int  # decoder blocks
    heads: int
    ffn: int
    init_std: float  # weight init scale


_T5_BASE = dict(text_dim=768, text_layers=12, text_heads=12, text_ff=3072, text_vocab=32128)
_ENCODEC_32K = dict(codec_filters=64, codec_hidden=128, codec_lstm_layers=2, codebook_size=2048)
SHAPES: dict[str, Shape] = {
    "small": Shape(**_T5_BASE, **_ENCODEC_32K, dim=1024, layers=24, heads=16, ffn=4096, init_std=0.02),
    "medium": Shape(**_T5_BASE, **_ENCODEC_32K, dim=1536, layers=48, heads=24, ffn=6144, init_std=0.02),
    "large": Shape(**_T5_BASE, **_ENCODEC_32K, dim=2048, layers=48, heads=32, ffn=8192, init_std=0.02),
    # Tiny: toy widths, same framing. At 0.02 init the text would not move greedy codes at hidden size 32.
    "tiny": Shape(
        text_dim=16, text_layers=1, text_heads=2, text_ff=32, text_vocab=512,
        codec_filters=4, codec_hidden=16, codec_lstm_layers=1, codebook_size=64,
        dim=32, layers=2, heads=2, ffn=64, init_std=0.2,
    ),
}  # fmt: skip

_CORPUS = [
    "80s pop track with bassy drums and synth",
    "90s rock song with loud guitars and heavy drums",
    "a light and cheerly EDM track, with syncopated drums, aery pads, and strong emotions",
    "lofi slow bpm electro chill with organic samples",
    "happy rock with an electric guitar solo",
    "calm piano melody in a quiet room",
    "ambient soundscape with soft strings and rain",
    "jazz trio with upright bass, brushed drums and piano",
    "epic orchestral music with brass and choir",
    "acoustic folk guitar with gentle singing",
    "techno beat at 128 bpm with a deep kick",
    "hip hop instrumental with vinyl crackle",
    "sad violin solo, slow tempo",
    "funky bass line with a tight groove",
    "reggae rhythm with offbeat guitar chords",
    "dreamy synthwave with retro arpeggios",
    "a short longer text for testing",
    "电子音乐，带有强烈的鼓点",
    "轻松的钢琴曲，适合学习",
    "摇滚音乐，吉他独奏",
    "古典音乐，弦乐四重奏",
    "安静的环境音乐，雨声",
    "欢快的流行歌曲，节奏明快",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (every unicode string tokenizes; no unknowns) with T5 specials."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
        model_max_length=512,
    )


def build_config(shape: Shape, *, stereo: bool = False, melody: bool = False) -> MusicgenConfig | MusicgenMelodyConfig:
    """A config laid out like facebook/musicgen-{small,medium,large} (or the -stereo- and -melody variants)."""
    # EnCodec derives its codebook count from the bandwidth: 4 codebooks at 50 Hz of log2(codebook_size) bits each
    # (2.2 kbps for the real 2048-entry codebooks).
    bandwidth = CODEBOOKS_PER_CHANNEL * math.log2(shape.codebook_size) * FRAME_RATE / 1000
    text_encoder = T5Config(
        vocab_size=shape.text_vocab,
        d_model=shape.text_dim,
        d_kv=shape.text_dim // shape.text_heads,
        d_ff=shape.text_ff,
        num_layers=shape.text_layers,
        num_heads=shape.text_heads,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
    )
    audio_encoder = EncodecConfig(
        sampling_rate=SAMPLING_RATE,
        audio_channels=1,
        upsampling_ratios=UPSAMPLING_RATIOS,
        target_bandwidths=[round(bandwidth, 1)],
        codebook_size=shape.codebook_size,
        codebook_dim=shape.codec_hidden,
        hidden_size=shape.codec_hidden,
        num_filters=shape.codec_filters,
        num_lstm_layers=shape.codec_lstm_layers,
        normalize=False,
        use_causal_conv=False,
        use_conv_shortcut=False,
        chunk_length_s=None,
        overlap=None,
    )
    channels = 2 if stereo else 1
    decoder_config = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    decoder = decoder_config(
        vocab_size=shape.codebook_size,
        hidden_size=shape.dim,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        ffn_dim=shape.ffn,
        max_position_embeddings=2048,
        num_codebooks=CODEBOOKS_PER_CHANNEL * channels,
        audio_channels=channels,
        pad_token_id=shape.codebook_size,
        bos_token_id=shape.codebook_size,
        initializer_factor=shape.init_std,
    )
    if melody:  # 12 chroma bins for 235 frames: 30 s at the feature extractor's 4096-sample hop
        return MusicgenMelodyConfig(
            text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder, num_chroma=12, chroma_length=235,
            initializer_factor=shape.init_std,
        )  # fmt: skip
    return MusicgenConfig(
        text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder, initializer_factor=shape.init_std
    )  # fmt: skip


def randomize_codebooks(codec: EncodecModel) -> None:
    """EnCodec's codebooks start as zeros (the real ones are learned), which would make decoded audio independent of
    the codes."""
    with torch.no_grad():
        for layer in codec.quantizer.layers:
            codebook: Any = layer.codebook
            codebook.embed.copy_(torch.randn_like(codebook.embed))
            codebook.embed_avg.copy_(codebook.embed)


def build_random_codec(shape: str, device: str = "cpu") -> EncodecModel:
    with torch.device(device):
        codec = EncodecModel(cast(EncodecConfig, build_config(SHAPES[shape]).audio_encoder)).eval()
    randomize_codebooks(codec)
    return codec


# MultiBand Diffusion for MusicGen as audiocraft trains it (grids/diffusion/4_bands_base_32khz.py on the solver and
# score-model defaults). The published file's U-Net is read from its own cfg at load time; its size points to
# res_blocks 2 and the codec latent (128) as codec_dim, which is what is built here.
MBD_UNET = dict(
    hidden=48, depth=4, res_blocks=2, norm_groups=4, kernel=8, stride=4, growth=4, max_channels=10000, dropout=0.0,
    emb_all_layers=True, bilstm=False, transformer=False, cross_attention=False,
)  # fmt: skip
MBD_SCHEDULE = dict(
    repartition="power", beta_t0=1.0e-5, beta_t1=2.9e-2, beta_exp=7.5, num_steps=1000, variance="beta", clip=5.0,
    rescale=1.0, n_bands=None, noise_scale=1.0,
)  # fmt: skip
MBD_POWER_STD = [None, None, 0.4, 0.75]  # bands 2 and 3 rescale their 8 mel bands; 0 and 1 use no processor


def build_random_mbd(codec_dim: int, hidden: int = 48, seed: int = 0) -> MBDCheckpoint:
    """Random weights in the published MBD layout for a codec of latent width `codec_dim`."""
    from musicgen_api.audio.diffusion import MultiBandProcessor
    from musicgen_api.audio.unet import DiffusionUnet, UnetConfig

    bands: list[BandCheckpoint] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for power_std in MBD_POWER_STD:
            processor = {"name": "multi_band_processor", "use": power_std is not None, "n_bands": 8,
                         "num_samples": 10000, "power_std": power_std or 0.4}  # fmt: skip
            cfg = {"channels": 1, "diffusion_unet": {**MBD_UNET, "hidden": hidden, "codec_dim": codec_dim},
                   "schedule": dict(MBD_SCHEDULE), "processor": processor}  # fmt: skip
            unet = DiffusionUnet(UnetConfig.from_cfg(cfg, len(bands)))
            state: dict[str, torch.Tensor] = {}
            if power_std is not None:
                stats = MultiBandProcessor(SAMPLING_RATE, 8, power_std)
                stats.counts.fill_(10000)
                stats.sum_x.copy_(torch.randn(8) * 10)
                stats.sum_x2.copy_(stats.sum_x**2 / 10000 + torch.rand(8) * 1000 + 100)
                stats.sum_target_x2.copy_(torch.rand(8) * 1000 + 100)
                state = stats.state_dict()
            bands.append(BandCheckpoint(cfg, unet.state_dict(), state))
    return MBDCheckpoint(sample_rate=SAMPLING_RATE, bands=bands)


def build_random_musicgen(
    shape: str,
    *,
    stereo: bool = False,
    melody: bool = False,
    seed: int = 1234,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MusicgenForConditionalGeneration | MusicgenMelodyForConditionalGeneration:
    """A seeded random-weight model, built directly on `device` in `dtype` (no host copy of large weights)."""
    dims = SHAPES[shape]
    config = build_config(dims, stereo=stereo, melody=melody)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = (
                MusicgenMelodyForConditionalGeneration(config)
                if isinstance(config, MusicgenMelodyConfig)
                else MusicgenForConditionalGeneration(config)
            ).eval()  # type: ignore[no-untyped-call]  # transformers wraps eval() untyped
        finally:
            torch.set_default_dtype(previous)
        randomize_codebooks(model.audio_encoder)
    start = dims.codebook_size
    model.generation_config = GenerationConfig(
        do_sample=True, guidance_scale=3.0, max_length=1500,
        bos_token_id=start, pad_token_id=start, decoder_start_token_id=start,
    )  # fmt: skip
    return model


def save_random_musicgen(
    path: pathlib.Path,
    shape: str = "tiny",
    *,
    stereo: bool = False,
    melody: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> pathlib.Path:
    """Write a random-weight checkpoint plus tokenizer (and a melody model's feature-extractor settings) to `path`,
    loadable with `from_pretrained(path)`."""
    path = pathlib.Path(path)
    build_random_musicgen(shape, stereo=stereo, melody=melody, device=device, dtype=dtype).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    if melody:  # transformers' MusicgenMelodyFeatureExtractor needs torchaudio to be built, so write its JSON
        (path / "preprocessor_config.json").write_text(json.dumps(ChromaSettings().to_dict(), indent=2) + "\n")
    return path
