"""Build a tiny, random-weight MusicGen checkpoint on disk for the test suite.

The real ``facebook/musicgen-small`` checkpoint is ~2 GB and cannot be fetched in CI
(no network, no HF hub). Tests still want to exercise the exact code path a user
takes, ``MusicgenForConditionalGeneration.from_pretrained(path)`` plus
``AutoTokenizer.from_pretrained(path)``, so this module writes a folder with the
same layout as the real checkpoint (``config.json`` holding ``text_encoder`` /
``audio_encoder`` / ``decoder`` sub-configs, ``generation_config.json``, weights and a
tokenizer) but with toy sizes, seeded weights and an offline-trained tokenizer.

The audio codec keeps MusicGen's real 32 kHz framing (hop 640 samples, 50 frames/s,
4 codebooks per channel) so durations and sample counts match the real model.
"""

from __future__ import annotations

import math
import pathlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

SEED = 1234
SAMPLING_RATE = 32_000
UPSAMPLING_RATIOS = [8, 5, 4, 4]
HOP_LENGTH = math.prod(UPSAMPLING_RATIOS)  # 640 samples: 50 frames/s, as in musicgen-small
CODEBOOK_SIZE = 64
CODEBOOKS_PER_CHANNEL = 4
# Encodec derives num_quantizers as 1000 * bw // (frame_rate * log2(codebook_size)).
# musicgen-small uses 2.2 kbps with 2048-entry codebooks (11 bits) -> 4; with 64 entries
# (6 bits) the same 4 codebooks need 4 * 6 * 50 = 1.2 kbps.
FRAME_RATE = SAMPLING_RATE // HOP_LENGTH
TARGET_BANDWIDTH = CODEBOOKS_PER_CHANNEL * math.log2(CODEBOOK_SIZE) * FRAME_RATE / 1000

# musicgen-small uses 0.02; at hidden size 32 that leaves the text conditioning too weak to
# change greedy codes, so prompts would not influence the tiny model's output at all.
INIT_STD = 0.2

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2 as in T5

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


def build_config(vocab_size: int, *, stereo: bool = False) -> MusicgenConfig:
    """Tiny config laid out like facebook/musicgen-small (or musicgen-stereo-small)."""
    text_encoder = T5Config(
        vocab_size=vocab_size,
        d_model=16,  # != decoder hidden size, so enc_to_dec_proj exists as in the real model
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    audio_encoder = EncodecConfig(
        sampling_rate=SAMPLING_RATE,
        audio_channels=1,  # stereo MusicGen decodes each channel with a mono codec
        upsampling_ratios=UPSAMPLING_RATIOS,
        target_bandwidths=[TARGET_BANDWIDTH],
        codebook_size=CODEBOOK_SIZE,
        codebook_dim=16,
        hidden_size=16,
        num_filters=4,
        num_lstm_layers=1,
        normalize=False,
        use_causal_conv=False,
        use_conv_shortcut=False,
        chunk_length_s=None,
        overlap=None,
    )
    channels = 2 if stereo else 1
    decoder = MusicgenDecoderConfig(
        vocab_size=CODEBOOK_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=64,
        max_position_embeddings=2048,
        num_codebooks=CODEBOOKS_PER_CHANNEL * channels,
        audio_channels=channels,
        pad_token_id=CODEBOOK_SIZE,
        bos_token_id=CODEBOOK_SIZE,
        initializer_factor=INIT_STD,
    )
    return MusicgenConfig(
        text_encoder=text_encoder,
        audio_encoder=audio_encoder,
        decoder=decoder,
        initializer_factor=INIT_STD,
    )


def build_tiny_musicgen(path: pathlib.Path, *, stereo: bool = False) -> pathlib.Path:
    """Write a tiny seeded MusicGen model plus tokenizer to ``path`` and return ``path``."""
    path = pathlib.Path(path)
    tokenizer = build_tokenizer()
    config = build_config(len(tokenizer), stereo=stereo)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = MusicgenForConditionalGeneration(config).eval()
        # Encodec codebooks are zero-initialised buffers (the real ones are learned), which
        # would make decoded audio independent of the generated codes.
        for layer in model.audio_encoder.quantizer.layers:
            codebook = layer.codebook
            codebook.embed.copy_(torch.randn_like(codebook.embed))
            codebook.embed_avg.copy_(codebook.embed)
    model.generation_config = GenerationConfig(
        do_sample=True,
        guidance_scale=3.0,
        max_length=1500,
        bos_token_id=CODEBOOK_SIZE,
        pad_token_id=CODEBOOK_SIZE,
        decoder_start_token_id=CODEBOOK_SIZE,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
