"""Speech data: STFT, audio I/O, the embedded synthetic corpus, noise and datasets."""

from vdvae_jax.data.audio import (
    AudioError,
    load_wav,
    normalise_peak,
    save_wav,
    segment_waveform,
    trim_silence,
    validate_waveform,
)
from vdvae_jax.data.corpus import (
    SPLITS,
    Corpus,
    Utterance,
    build_default_corpus,
    default_cache_dir,
)
from vdvae_jax.data.datasets import (
    VOICEBANK_VAL_SPEAKERS,
    batch_iterator,
    build_spectrogram_dataset,
    voicebank_splits,
    wav_folder,
    wsj0_splits,
)
from vdvae_jax.data.noise import (
    NOISE_TYPES,
    amplitude_modulated,
    babble,
    brown,
    coloured,
    make_noise,
    mix_at_snr,
    pink,
    white,
)
from vdvae_jax.data.stft import (
    StftConfig,
    istft,
    istft_librosa,
    power,
    power_spectrogram_reference,
    sine_window,
    stft,
    stft_librosa,
)

__all__ = [
    # stft
    "StftConfig",
    "sine_window",
    "stft",
    "istft",
    "power",
    "stft_librosa",
    "istft_librosa",
    "power_spectrogram_reference",
    # audio
    "AudioError",
    "load_wav",
    "save_wav",
    "validate_waveform",
    "trim_silence",
    "segment_waveform",
    "normalise_peak",
    # corpus
    "SPLITS",
    "Corpus",
    "Utterance",
    "build_default_corpus",
    "default_cache_dir",
    # noise
    "NOISE_TYPES",
    "white",
    "pink",
    "brown",
    "coloured",
    "amplitude_modulated",
    "babble",
    "mix_at_snr",
    "make_noise",
    # datasets
    "wav_folder",
    "wsj0_splits",
    "voicebank_splits",
    "VOICEBANK_VAL_SPEAKERS",
    "build_spectrogram_dataset",
    "batch_iterator",
]
