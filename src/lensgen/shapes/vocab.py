"""The Shapes world's vocabulary: shapes, colours, sizes, numbers and the words a sign may show.

Colours are GenEval's ten. Backgrounds are low-saturation mid greys, so that every object colour
(black and white included) stands apart from the background: the judge relies on that.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "heart")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}

# GenEval's ten colours, as the renderer paints them (sRGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 220, 20),
    "green": (30, 160, 50),
    "blue": (30, 80, 220),
    "purple": (130, 40, 180),
    "pink": (255, 130, 190),
    "brown": (130, 75, 30),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Background greys: any level in this range is at least ~90 RGB units from every object colour.
BACKGROUND_LEVELS = (100, 170)
SIGN_COLOUR = (250, 250, 250)  # a sign is a white board ...
TEXT_COLOUR = (15, 15, 15)  # ... with black capital letters

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
WORD_NUMBERS: dict[str, int] = {w: n for n, w in NUMBER_WORDS.items()}

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# Object size is the radius of the object's extent as a fraction of the image's short side.
SIZE_WORDS: tuple[tuple[float, str], ...] = ((0.15, "small"), (0.22, "medium"), (1.0, "large"))


def size_word(radius: float) -> str:
    for limit, word in SIZE_WORDS:
        if radius < limit:
            return word
    return SIZE_WORDS[-1][1]


def plural(shape: str, count: int) -> str:
    return shape if count == 1 else PLURALS[shape]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Words a sign may show: 3-8 capital letters. A hash rule (see heldout.py) reserves some for evaluation.
WORDS: tuple[str, ...] = tuple(
    """
    CAT DOG SUN MAP BOX CUP KEY BUS HAT PEN RED SKY TOP ZIP FOX JAM OWL ICE ART BEE
    OPEN STOP SHOP CAFE BOOK FISH GOLD LAMP MILK ROAD SALE TREE WIND RAIN SNOW STAR
    PARK BIKE CAKE DOOR EXIT FARM GAME HOME JAZZ KING LION MOON NEWS PINK QUIZ ROSE
    HELLO WORLD APPLE BREAD CLOCK DREAM EARTH FRUIT GHOST HOUSE LIGHT MUSIC NIGHT OCEAN
    PIANO QUEEN RIVER SMILE TIGER WATER ZEBRA HAPPY LEMON MANGO PAPER ROBOT SPACE TRAIN
    SHAPES GARDEN BRIDGE CASTLE DINNER FOREST GUITAR ISLAND JUNGLE KITTEN LETTER MARKET
    ORANGE PLANET RABBIT SILVER TICKET WINTER YELLOW SUMMER PENCIL ROCKET
    BALLOON CAPTAIN DIAMOND FREEDOM HARVEST KITCHEN LIBRARY MORNING RAINBOW THUNDER
    VILLAGE WEATHER
    ELEPHANT MOUNTAIN SUNSHINE NOTEBOOK DINOSAUR FIREWORK HOSPITAL UMBRELLA
    """.split()
)
