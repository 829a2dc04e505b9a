"""The dense-caption prompt: one paragraph of about 109 words, the Lens captions' average length,
covering objects, attributes, spatial relations, actions and background."""

DENSE_PROMPT = (
    "Describe this image in a single paragraph of about 100 to 120 words, as a caption for training a "
    "text-to-image model. Cover: every salient object and how many there are; their attributes (colour, "
    "material, size, shape, texture, and any visible text, quoted exactly); where things are relative to each "
    "other and in the frame (left, right, above, below, foreground, background); what any people or animals "
    "are doing; the setting, background and lighting; and the style (photograph, illustration, 3D render, "
    "painting). State only what is visible, without guessing. Do not start with 'The image shows' or 'This "
    "image', and do not use lists, headings or markdown."
)
