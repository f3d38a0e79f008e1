"""A SLURP-like grammar of smart-home / assistant commands, each template labelled with a scenario.

Why a grammar and not a corpus: the mini recipe must build offline from a fresh clone. Sentences are
templates (``"wake me up at {time} on {day}"``) whose ``{slot}`` fields are filled from word lists
(names, cities, rooms, devices, numbers spelled as words, days, times, ...). The scenario names are
SLURP's 18, so the SLU_scenario prompt of ``tasu/data/prompt_sets/en.jsonl`` applies unchanged and
chance accuracy is about 1/18.

The number of distinct sentences is finite and :func:`Grammar.capacity` bounds it from above (the
sum over templates of the product of their slot list sizes; two templates may fill to one sentence),
so a caller asking for more unique sentences than that is refused instead of looping forever.
:meth:`Grammar.sample_unique` draws without replacement: a scenario uniformly, then one of its
templates, then an unused combination of that template (templates that run out are retired), so
every scenario is about equally frequent however large its templates' slot products are.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "fifteen", "twenty", "twenty five", "thirty", "forty", "forty five", "fifty",
           "sixty"]
HOURS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve"]
TIMES = [f"{h}{m} {p}" for h in HOURS for m in ("", " fifteen", " thirty", " forty five")
         for p in ("am", "pm", "in the morning", "in the evening")]

SLOTS: dict[str, list[str]] = {
    "name": ["john", "mary", "sarah", "david", "emma", "james", "olivia", "peter", "anna", "tom",
             "lucy", "michael", "sophie", "daniel", "laura", "chris", "kate", "paul", "alice",
             "george", "helen", "mark", "julia", "robert", "grace", "steve", "linda", "jack", "nina",
             "sam", "oliver", "amy", "henry", "rachel", "simon", "claire"],
    "relation": ["mom", "dad", "sister", "brother", "wife", "husband", "boss", "grandma", "uncle",
                 "aunt", "friend", "neighbour"],
    "city": ["london", "paris", "boston", "dublin", "tokyo", "berlin", "madrid", "rome", "chicago",
             "seattle", "denver", "sydney", "toronto", "moscow", "vienna", "prague", "lisbon", "oslo",
             "cairo", "mumbai", "beijing", "seoul", "miami", "dallas", "atlanta", "austin", "houston",
             "glasgow", "manchester", "amsterdam", "brussels", "stockholm", "athens", "bangkok"],
    "room": ["kitchen", "bedroom", "living room", "bathroom", "hallway", "garage", "office",
             "dining room", "basement", "garden", "nursery", "attic"],
    "device": ["lights", "lamp", "heater", "fan", "air conditioner", "television", "radio",
               "vacuum cleaner", "coffee machine", "washing machine", "dishwasher", "smart plug",
               "curtains", "blinds", "kettle", "oven"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "warm white"],
    "num": NUMBERS,
    "percent": ["ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"],
    "day": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today",
            "tomorrow", "next week", "the weekend"],
    "time": TIMES,
    "month": ["january", "february", "march", "april", "may", "june", "july", "august", "september",
              "october", "november", "december"],
    "ordinal": ["first", "second", "third", "fourth", "fifth", "tenth", "twelfth", "fifteenth",
                "twentieth", "thirtieth"],
    "event": ["meeting", "dentist appointment", "lunch", "dinner", "party", "doctor appointment",
              "team call", "interview", "yoga class", "haircut", "birthday party", "football match",
              "piano lesson", "flight"],
    "genre": ["jazz", "rock", "pop", "classical", "hip hop", "country", "blues", "reggae", "metal",
              "folk", "soul", "disco", "techno"],
    "artist": ["the beatles", "adele", "coldplay", "queen", "madonna", "taylor swift", "elvis",
               "bob marley", "abba", "shakira", "eminem", "beyonce", "the rolling stones",
               "ed sheeran", "michael jackson", "nirvana"],
    "podcast": ["the daily", "serial", "radiolab", "the history hour", "science weekly",
                "the morning show", "planet money", "this american life"],
    "station": ["classic fm", "jazz fm", "kiss fm", "heart radio", "capital radio", "radio one"],
    "food": ["pizza", "sushi", "burger", "noodles", "curry", "salad", "tacos", "pasta", "soup",
             "sandwich", "fried rice", "kebab", "dumplings", "fish and chips", "ramen", "burrito"],
    "cuisine": ["italian", "chinese", "indian", "mexican", "thai", "japanese", "french", "greek",
                "korean", "spanish", "turkish", "vietnamese"],
    "dish": ["pancakes", "lasagna", "an omelette", "chocolate cake", "banana bread", "chicken soup",
             "risotto", "apple pie", "a curry", "meatballs", "lemon tart", "a stir fry", "scones",
             "roast chicken"],
    "ingredient": ["eggs", "butter", "flour", "sugar", "garlic", "onions", "rice", "potatoes",
                   "carrots", "chicken", "salmon", "milk", "cheese", "tomatoes", "spinach",
                   "mushrooms"],
    "item": ["milk", "eggs", "bread", "butter", "cheese", "apples", "rice", "coffee", "sugar", "tea",
             "bananas", "tomatoes", "onions", "yogurt", "orange juice", "cereal", "toothpaste",
             "soap", "batteries", "paper towels"],
    "list": ["shopping", "grocery", "to do", "packing", "birthday", "christmas", "work", "holiday"],
    "topic": ["sports", "politics", "business", "technology", "science", "health", "entertainment",
              "world", "local", "financial", "football", "election"],
    "source": ["the bbc", "cnn", "reuters", "the guardian", "the new york times", "sky news",
               "the times", "fox news"],
    "vehicle": ["train", "bus", "taxi", "flight", "ferry", "tram", "uber"],
    "place": ["the airport", "the station", "the city centre", "the office", "the hospital",
              "the museum", "the stadium", "the beach", "the university", "the mall"],
    "weather_word": ["rain", "snow", "sunshine", "wind", "fog", "a storm", "frost", "thunder"],
    "clothing": ["a coat", "an umbrella", "sunglasses", "boots", "a scarf", "a jacket", "shorts",
                 "gloves"],
    "game": ["chess", "trivia", "a quiz", "hangman", "twenty questions", "tic tac toe", "sudoku",
             "bingo"],
    "audiobook": ["harry potter", "the hobbit", "pride and prejudice", "dracula", "treasure island",
                  "the great gatsby", "moby dick", "emma"],
    "thing": ["the moon", "the sun", "mount everest", "the eiffel tower", "the pacific ocean",
              "the amazon river", "the great wall of china", "the statue of liberty", "mars",
              "the nile"],
    "person": ["albert einstein", "isaac newton", "marie curie", "shakespeare", "napoleon",
               "abraham lincoln", "charles darwin", "mozart", "leonardo da vinci", "cleopatra"],
    "social_site": ["facebook", "twitter", "instagram", "linkedin"],
    "feeling": ["happy", "tired", "bored", "sad", "excited", "stressed", "hungry", "lonely"],
    "movie_genre": ["comedy", "horror", "action", "romance", "science fiction", "drama",
                    "thriller", "cartoon"],
    "language": ["french", "spanish", "german", "italian", "japanese", "chinese", "russian",
                 "portuguese"],
    "word": ["hello", "thank you", "good morning", "goodbye", "cheese", "water", "friend", "love",
             "computer", "happy birthday"],
}

TEMPLATES: list[tuple[str, str]] = [
    # alarm
    ("alarm", "wake me up at {time} on {day}"),
    ("alarm", "set an alarm for {time}"),
    ("alarm", "set an alarm for {time} {day}"),
    ("alarm", "cancel my alarm for {time}"),
    ("alarm", "what alarms do i have for {day}"),
    ("alarm", "change my {time} alarm to {time}"),
    # audio
    ("audio", "turn the volume up to {percent} percent"),
    ("audio", "set the volume to {percent} percent in the {room}"),
    ("audio", "mute the speaker in the {room}"),
    ("audio", "make it {num} steps quieter"),
    ("audio", "turn the volume down to {percent} percent in the {room}"),
    ("audio", "unmute the {room} speaker and set it to {percent} percent"),
    # calendar
    ("calendar", "remind me about the {event} with {name} on {day}"),
    ("calendar", "add a {event} with {name} at {time} on {day}"),
    ("calendar", "what is on my calendar for {day}"),
    ("calendar", "cancel my {event} on {day}"),
    ("calendar", "when is my {event} with {name}"),
    ("calendar", "move the {event} to {month} the {ordinal}"),
    # cooking
    ("cooking", "how do i make {dish}"),
    ("cooking", "give me a recipe for {dish} with {ingredient}"),
    ("cooking", "how long should i bake {dish} for"),
    ("cooking", "what can i cook with {ingredient} and {ingredient}"),
    # datetime
    ("datetime", "what time is it in {city}"),
    ("datetime", "what is the date on {day}"),
    ("datetime", "what day of the week is {month} the {ordinal}"),
    ("datetime", "what is the time difference between {city} and {city}"),
    # email
    ("email", "send an email to {name} about the {event}"),
    ("email", "do i have any new emails from {name}"),
    ("email", "read my latest email from my {relation}"),
    ("email", "reply to {name} and say i will be there at {time}"),
    # general
    ("general", "tell me a joke about {thing}"),
    ("general", "i am feeling {feeling} today"),
    ("general", "say {word} in {language}"),
    ("general", "repeat what you just said to {name}"),
    ("general", "tell {name} a joke about {thing}"),
    ("general", "i am {feeling} because of the {event}"),
    # iot
    ("iot", "turn on the {device} in the {room}"),
    ("iot", "turn off the {device} in the {room}"),
    ("iot", "switch the {room} lights to {color}"),
    ("iot", "dim the lights in the {room} to {percent} percent"),
    ("iot", "set the {room} temperature to {num} degrees"),
    ("iot", "start the {device} at {time}"),
    # lists
    ("lists", "add {item} to my {list} list"),
    ("lists", "remove {item} from the {list} list"),
    ("lists", "what is on my {list} list"),
    ("lists", "add {item} and {item} to the {list} list"),
    # music
    ("music", "play some {genre} music in the {room}"),
    ("music", "play {artist} in the {room}"),
    ("music", "who sings this song by {artist}"),
    ("music", "shuffle my {genre} playlist"),
    ("music", "play the latest album by {artist}"),
    # news
    ("news", "what are the latest {topic} news"),
    ("news", "read me the {topic} headlines from {source}"),
    ("news", "what is happening in {city} today"),
    ("news", "give me the news from {source}"),
    ("news", "any {topic} news about {city} from {source}"),
    # play
    ("play", "play the next episode of {podcast}"),
    ("play", "put on {station} in the {room}"),
    ("play", "let us play {game}"),
    ("play", "read the audiobook {audiobook} from chapter {num}"),
    ("play", "recommend a {movie_genre} podcast for {day}"),
    # qa
    ("qa", "how far is {thing} from {city}"),
    ("qa", "who was {person}"),
    ("qa", "when was {person} born"),
    ("qa", "how tall is {thing}"),
    ("qa", "what is {num} times {num}"),
    ("qa", "how do you say {word} in {language}"),
    # recommendation
    ("recommendation", "recommend a good {cuisine} restaurant in {city}"),
    ("recommendation", "suggest a {movie_genre} movie for {day}"),
    ("recommendation", "what should i wear in {city} {day}"),
    ("recommendation", "recommend some {genre} artists like {artist}"),
    # social
    ("social", "post on {social_site} that i am {feeling}"),
    ("social", "what did {name} post on {social_site}"),
    ("social", "send a message to my {relation} on {social_site}"),
    ("social", "check my {social_site} notifications from {name}"),
    # takeaway
    ("takeaway", "order {food} from the {cuisine} place"),
    ("takeaway", "order {num} portions of {food} for {time}"),
    ("takeaway", "where is my {food} order"),
    ("takeaway", "find a {cuisine} takeaway that delivers {food}"),
    # transport
    ("transport", "book a {vehicle} to {place} at {time}"),
    ("transport", "when is the next {vehicle} to {city}"),
    ("transport", "how long does the {vehicle} to {place} take"),
    ("transport", "book a {vehicle} from {city} to {city} on {day}"),
    # weather
    ("weather", "what is the weather like in {city} {day}"),
    ("weather", "will there be {weather_word} in {city} {day}"),
    ("weather", "do i need {clothing} {day}"),
    ("weather", "how cold will it be in {city} on {day}"),
    ("weather", "what is the temperature in {city} at {time}"),
]

_SLOT = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Template:
    scenario: str
    text: str
    slots: tuple[str, ...]

    @property
    def capacity(self) -> int:
        """Distinct fillings: the product of the sizes of its slots' lists."""
        return math.prod(len(SLOTS[s]) for s in self.slots)

    def fill(self, index: int) -> str:
        """The ``index``-th filling (mixed-radix digits of ``index``, one per slot)."""
        values = []
        for slot in self.slots:
            index, digit = divmod(index, len(SLOTS[slot]))
            values.append(SLOTS[slot][digit])
        it = iter(values)
        return _SLOT.sub(lambda _: next(it), self.text)


class Grammar:
    """The templates, their exact sentence counts and seeded sampling without replacement."""

    def __init__(self, templates: list[tuple[str, str]] = TEMPLATES):
        self.templates = [Template(sc, text, tuple(_SLOT.findall(text))) for sc, text in templates]
        unknown = {s for t in self.templates for s in t.slots} - set(SLOTS)
        if unknown:
            raise ValueError(f"templates use undefined slots: {sorted(unknown)}")
        self.scenarios = sorted({t.scenario for t in self.templates})

    def capacity(self) -> int:
        """Upper bound on distinct sentences: the sum of the templates' capacities (two templates
        can in principle produce one sentence; sampling removes such duplicates)."""
        return sum(t.capacity for t in self.templates)

    def words(self) -> list[str]:
        """Every word any sentence of the grammar can contain (the domain's lexicon)."""
        words = set()
        for t in self.templates:
            words.update(w for w in _SLOT.sub(" ", t.text).split())
            for s in t.slots:
                words.update(w for v in SLOTS[s] for w in v.split())
        return sorted(words)

    def sample_unique(self, n: int, rng: random.Random) -> list[tuple[str, str]]:
        """``n`` distinct ``(sentence, scenario)`` pairs. Refuses (ValueError) when ``n`` is more
        than half the grammar's capacity: such a request would leave no novel test sentences."""
        if n > self.capacity() // 2:
            raise ValueError(f"asked for {n} unique sentences, but the grammar has only "
                             f"{self.capacity()} (at most half of them may be drawn)")
        used = [set() for _ in self.templates]
        by_scenario = {sc: [i for i, t in enumerate(self.templates) if t.scenario == sc]
                       for sc in self.scenarios}
        seen, out = set(), []
        while len(out) < n:
            if not by_scenario:  # only possible when templates overlap heavily
                raise ValueError(f"the grammar ran out after {len(out)} distinct sentences")
            scenario = rng.choice(sorted(by_scenario))
            ti = rng.choice(by_scenario[scenario])
            t = self.templates[ti]
            index = self._unused_index(t, used[ti], rng)
            used[ti].add(index)
            if len(used[ti]) == t.capacity:  # exhausted: never drawn again
                by_scenario[scenario].remove(ti)
                if not by_scenario[scenario]:
                    del by_scenario[scenario]
            sentence = t.fill(index)
            if sentence not in seen:
                seen.add(sentence)
                out.append((sentence, t.scenario))
        return out

    @staticmethod
    def _unused_index(t: Template, used: set[int], rng: random.Random) -> int:
        """A random index of ``t`` not in ``used``: rejection while most are free, else an explicit
        draw from what is left (so a nearly exhausted template never spins)."""
        if len(used) < t.capacity // 2:
            while True:
                index = rng.randrange(t.capacity)
                if index not in used:
                    return index
        return rng.choice(sorted(set(range(t.capacity)) - used))
