"""Few-step distillation (Lens-Turbo): DMD2, decoupled DMD, SenseFlow and a GAN with R1, as loss terms."""
