"""Chat prompts for self-distillation, built offline from text on this machine plus hand-written templates.

`training_prompts(seed)` returns 31,600 distinct `{"category", "text"}` dicts (CATEGORY_COUNTS) over the 13 task
families of Spec-Bench (writing, roleplay, reasoning, math, coding, extraction, STEM, humanities, translation,
summarization, open QA, math reasoning, QA over a given passage). Sources: the standard library's documentation
(`pydoc_data.topics`, docstrings via `inspect`) and the source of its short functions; the GCIDE dictionary's
field-labelled terms (STEM, humanities) and headwords; fortune cookies (sayings to explain, lines to write from);
Debian's package descriptions; a generator of short made-up news reports; templates over hand-written word lists
and random numbers (`offline_text` reads the Debian text). No Spec-Bench text is used, and any prompt sharing an
8-word sequence with a Spec-Bench turn is dropped (`overlaps_spec_bench`; the Spec-Bench file is required).

The output is deterministic for a seed, a Python version and the installed Debian text, so the list used for
training is written once, from the repository root, after `apt-get install dict-gcide fortunes fortunes-min`:

    python recipes/build_prompts.py --out data/prompts/v2.jsonl

`spectax/train/data/prompts.jsonl` (3,000 prompts, read by `spectax.train.prompt_files`) is the first list, built
by this script's version of commit 9f7de62 (templates and the standard library only, 13 families at 200-300 each).
"""

from __future__ import annotations

import argparse
import builtins
import functools
import importlib
import inspect
import itertools
import json
import keyword
import pydoc_data.topics
import random
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from recipes import offline_text, spec_bench
from spectax.train.prompt_files import write_prompts

SPEC_BENCH = spec_bench.question_file()
NGRAM = 8
MAX_PASSAGE_WORDS = 170

# prompts per category (31,600 in all): Spec-Bench's 13 task families, weighted toward the ones with long answers
CATEGORY_COUNTS = {
    "writing": 3000, "roleplay": 2000, "reasoning": 2400, "math": 2400, "math_reasoning": 3000, "coding": 2600,
    "extraction": 2400, "stem": 2200, "humanities": 2000, "translation": 2400, "summarization": 2400, "qa": 2400,
    "rag": 2400,
}

# Pure-Python-friendly standard library modules whose docstrings are read (importing them has no side effects).
DOC_MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar cmath codecs collections colorsys concurrent.futures "
    "configparser contextlib copy csv dataclasses datetime decimal difflib doctest email enum filecmp fnmatch "
    "fractions ftplib functools getopt gettext glob graphlib gzip hashlib heapq hmac html html.parser http.client "
    "http.cookies imaplib inspect io ipaddress itertools json locale logging lzma mailbox math mimetypes "
    "multiprocessing numbers operator os os.path pathlib pdb pickle pkgutil platform plistlib poplib pprint "
    "profile pstats queue quopri random re reprlib sched secrets selectors shelve shlex shutil signal smtplib "
    "socket socketserver sqlite3 stat statistics string struct subprocess symtable sysconfig tarfile tempfile "
    "textwrap threading time timeit tokenize tomllib trace traceback tracemalloc types unittest "
    "urllib.parse urllib.request uuid warnings wave weakref xml.dom.minidom xml.etree.ElementTree zipfile zlib "
    "zoneinfo"
).split()

# ---------------------------------------------------------------------------------------------------------------
# Hand-written word lists
# ---------------------------------------------------------------------------------------------------------------
NAMES = ("Amara Liam Sofia Kenji Priya Mateo Olga Tariq Hannah Diego Mei Samuel Fatima Lucas Ingrid Omar Chloe "
         "Ravi Elena Kwame Yuki Noah Leila Marco Aisha Felix Nadia Tomas Grace Hugo Zara Ethan Lina Pablo Rosa "
         "Viktor Maya Jonas Isla Arjun").split()
CITIES = ("Lisbon Nairobi Osaka Toronto Krakow Valparaiso Dundee Hobart Tampere Leipzig Cusco Pune Bergen Tucson "
          "Ghent Adelaide Bologna Curitiba Halifax Izmir Kyoto Lyon Malaga Nantes Porto Quebec Seville Tartu "
          "Utrecht Winnipeg").split()
COMPASS = ("north", "south", "east", "west")
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
JOBS = ("nurse", "carpenter", "software engineer", "teacher", "baker", "architect", "pharmacist", "electrician",
        "librarian", "pilot", "journalist", "veterinarian", "chemist", "gardener", "accountant", "translator")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cupcakes", "notebooks", "tulips", "cookies", "stamps",
         "seashells", "candles", "oranges", "comic books", "trading cards", "muffins", "bottles of juice", "balloons",
         "plums")

WRITING_FORMS = ("blog post", "short story", "poem", "haiku sequence", "limerick", "persuasive essay",
                 "product description", "cover letter", "restaurant review", "diary entry", "speech", "toast",
                 "newsletter introduction", "radio advertisement", "formal complaint letter", "thank-you note",
                 "movie pitch", "social media thread", "op-ed", "fairy tale", "sonnet", "dialogue scene",
                 "press release", "letter to a future self", "job advertisement", "podcast intro script")
WRITING_TOPICS = ("a rainy afternoon in a small bookshop", "learning to ride a bicycle as an adult",
                  "a city that runs entirely on bicycles", "the first day at a new job",
                  "a lighthouse keeper's last night", "why everyone should learn to cook one dish well",
                  "a robot that wants to become a gardener", "the joy of getting lost in a market",
                  "a solar-powered food truck", "an old map found in an attic", "a village without clocks",
                  "saving water at home", "a friendship between a fox and a crow", "the smell of fresh bread",
                  "a mountain hut during a snowstorm", "a community garden on a rooftop",
                  "a museum of forgotten inventions", "switching off phones for a weekend",
                  "a train journey across a desert", "a reusable coffee cup startup", "a lost umbrella's travels",
                  "the night before a big exam", "a chess club for retirees", "a street musician's best day",
                  "a noise-cancelling library", "the first snowfall of the year", "a bakery run by twins",
                  "adopting a three-legged dog", "a hot-air balloon festival", "a language exchange cafe",
                  "a secret garden behind a school", "volunteering at an animal shelter",
                  "a smart fridge with opinions", "moving to a country where you do not speak the language",
                  "a jazz club in the rain", "the last bookstore on the moon", "an electric ferry service",
                  "a grandmother's recipe box", "a small town's annual pumpkin race", "a quiet morning at sea")
AUDIENCES = ("young children", "busy parents", "university students", "retirees", "software developers",
             "first-time travellers", "a local newspaper", "a school board", "small business owners",
             "a group of hikers", "my team at work", "a science fiction magazine")
WRITING_CONSTRAINTS = ("Keep it under 150 words.", "Use a warm, friendly tone.", "Make it funny.",
                       "End with a surprising twist.", "Write it in the second person.",
                       "Include exactly three bullet points.", "Use simple words a child would know.",
                       "Give it a catchy title.", "Make every paragraph at most three sentences.",
                       "Avoid using the letter z.", "Write it as if it were 1920.", "Use vivid sensory details.",
                       "Add a call to action at the end.", "Make it rhyme.", "Keep it to five sentences.", "")
REVIEW_VERDICTS = ("loved it", "a total letdown", "fine, nothing special", "surprisingly good", "too long and boring",
                   "would recommend to anyone")
REWRITE_STYLES = ("a pirate", "a sports commentator", "a Victorian novelist", "a weather forecaster",
                  "a kindergarten teacher", "a noir detective", "a corporate press officer", "a medieval herald")

PERSONAS = ("a pirate captain who has just found a treasure map", "a medieval blacksmith",
            "a detective in 1920s Chicago", "a tour guide in ancient Rome", "a French pastry chef",
            "an astronaut on the International Space Station", "a wise old wizard", "a strict but kind football coach",
            "a cheerful customer support agent for a toaster company", "a time traveler from the year 2300",
            "a grumpy cat who can talk", "a Shakespearean actor who never leaves character",
            "a park ranger in Yellowstone", "a startup founder pitching to investors", "a lighthouse keeper",
            "a librarian who loves mystery novels", "a Viking explorer", "a marine biologist on a research ship",
            "a dragon guarding a mountain", "a 1950s radio host", "a robot butler", "a fitness instructor",
            "a museum guard who has seen everything", "a taxi driver in New York", "a Renaissance painter",
            "a jazz musician", "a mountain guide in Nepal", "a beekeeper", "a stand-up comedian",
            "a sommelier who only knows about lemonade", "a ghost haunting an old theatre",
            "a chess grandmaster", "a farmer during harvest season", "a superhero on their day off")
ROLEPLAY_OPENERS = ("Pretend you are {p}. Stay in character for the whole answer.",
                    "You are {p}. Answer as that character would.",
                    "Let's play a game: you are {p}, and I am a curious visitor.",
                    "Act as {p}. Use the vocabulary and attitude of that character.",
                    "Imagine you are {p}, talking to a reporter.")
ROLEPLAY_QUESTIONS = ("What does a typical day look like for you?", "What is the hardest part of your work?",
                      "Can you give me some advice for my first week?", "What are you most proud of?",
                      "Tell me about the strangest thing that ever happened to you.",
                      "What would you change about the world if you could?", "How do you relax after a long day?",
                      "What is your favourite meal, and why?", "Could you teach me one useful skill?",
                      "What scares you the most?", "Describe the view from where you are right now.",
                      "Why should I trust you?", "What is your plan for tomorrow?",
                      "How did you end up doing what you do?", "Please welcome me to your home.",
                      "What do you think about modern smartphones?")

STEM_TOPICS = ("photosynthesis", "the greenhouse effect", "plate tectonics", "natural selection", "DNA replication",
               "the immune system", "vaccines", "black holes", "the Doppler effect", "electromagnetic induction",
               "Newton's laws of motion", "entropy", "the ideal gas law", "chemical equilibrium", "catalysts",
               "pH and acidity", "semiconductors", "transistors", "lasers", "nuclear fission", "nuclear fusion",
               "the speed of light", "special relativity", "quantum tunnelling", "the periodic table",
               "covalent bonds", "enzymes", "the water cycle", "ocean currents", "volcanoes", "earthquakes",
               "the carbon cycle", "antibiotic resistance", "the human heart", "neurons", "sleep",
               "machine learning", "neural networks", "public-key cryptography", "hash functions", "compilers",
               "operating systems", "TCP/IP", "databases", "recursion", "binary search", "sorting algorithms",
               "Big-O notation", "prime numbers", "the Pythagorean theorem", "derivatives", "integrals",
               "probability", "Bayes' theorem", "matrices", "complex numbers", "fractals", "the Fibonacci sequence",
               "solar panels", "wind turbines", "batteries", "electric motors", "bridges", "GPS", "radar",
               "3D printing", "climate models", "tides", "the Moon's phases", "rainbows", "friction")
HUMANITIES_TOPICS = ("the Renaissance", "the Industrial Revolution", "the French Revolution", "the Silk Road",
                     "the printing press", "ancient Greek democracy", "the Roman Republic", "feudalism",
                     "the Enlightenment", "the Cold War", "colonialism", "the Meiji Restoration",
                     "the abolition of slavery", "the women's suffrage movement", "the Great Depression",
                     "stoicism", "utilitarianism", "existentialism", "Confucianism", "the social contract",
                     "Plato's allegory of the cave", "impressionism", "cubism", "the Baroque period",
                     "Romantic poetry", "the hero's journey", "tragedy in Greek theatre", "magical realism",
                     "the invention of writing", "supply and demand", "inflation", "opportunity cost",
                     "comparative advantage", "the tragedy of the commons", "globalization", "urbanization",
                     "nationalism", "human rights", "freedom of speech", "the separation of powers", "federalism",
                     "propaganda", "oral traditions", "mythology", "linguistic relativity", "dialects",
                     "the history of jazz", "the Harlem Renaissance", "museums", "cultural heritage",
                     "ethics of artificial intelligence", "the role of a free press", "public libraries",
                     "religious tolerance", "migration", "the welfare state", "minimalism in design",
                     "the Bauhaus school", "the history of the Olympic Games", "cartography")
SCIENCE_PAIRS = (("mitosis", "meiosis"), ("weather", "climate"), ("speed", "velocity"), ("mass", "weight"),
                 ("a virus", "a bacterium"), ("AC", "DC current"), ("an atom", "a molecule"),
                 ("RAM", "storage"), ("TCP", "UDP"), ("a compiler", "an interpreter"), ("fission", "fusion"),
                 ("correlation", "causation"), ("a stack", "a queue"), ("heat", "temperature"),
                 ("an element", "a compound"), ("a comet", "an asteroid"))
HUMANITIES_PAIRS = (("capitalism", "socialism"), ("a republic", "a monarchy"), ("Plato", "Aristotle"),
                    ("Baroque", "Classical music"), ("poetry", "prose"), ("fiscal", "monetary policy"),
                    ("impressionism", "expressionism"), ("ethics", "morality"), ("myth", "legend"),
                    ("a dialect", "a language"), ("the Stone Age", "the Bronze Age"),
                    ("direct", "representative democracy"))
STEM_TEMPLATES = ("Explain {t} to a high school student.", "How does {t} work? Give a concrete example.",
                  "What are the most important real-world applications of {t}?",
                  "What is a common misconception about {t}, and what is the truth?",
                  "Describe {t} in three short paragraphs: what it is, why it matters, and an open question.",
                  "Explain {t} using an everyday analogy.", "Write a short quiz with three questions about {t}.",
                  "Summarize the history of how scientists came to understand {t}.",
                  "What would happen if {t} did not exist or stopped working?",
                  "Explain {t} like I'm five, then again for an expert.")
HUMANITIES_TEMPLATES = ("What were the main causes and consequences of {t}?", "Explain {t} in simple terms.",
                        "Why is {t} still relevant today?", "Give three arguments for and three against {t}.",
                        "How did {t} influence art and culture?", "Write a short lesson plan to teach {t}.",
                        "Describe {t} from the point of view of someone living through it.",
                        "What are the key ideas behind {t}, and who were its main thinkers?",
                        "Compare {t} with a modern example.", "Write an essay outline about {t}.")
PAIR_TEMPLATES = ("What is the difference between {a} and {b}?", "Compare {a} and {b} in a short table.",
                  "Explain {a} versus {b} with an example of each.")

LANGUAGES = ("French", "German", "Spanish", "Italian", "Portuguese", "Dutch", "Swedish", "Polish", "Russian",
             "Chinese", "Japanese", "Korean", "Turkish", "Arabic", "Hindi")
FOREIGN_SENTENCES = {
    "German": ("Der Zug nach Hamburg hat heute zwanzig Minuten Verspätung.",
               "Meine Großmutter backt jeden Sonntag einen Apfelkuchen.",
               "Die Stadt plant, im nächsten Jahr drei neue Radwege zu bauen.",
               "Wir haben im Urlaub viele alte Burgen besichtigt.", "Kannst du mir bitte das Salz geben?",
               "Die Bibliothek bleibt wegen Renovierungsarbeiten bis Mai geschlossen.",
               "Im Winter fahren viele Familien in die Berge zum Skifahren.",
               "Das neue Museum zeigt Gemälde aus dem neunzehnten Jahrhundert.",
               "Der Bäcker an der Ecke öffnet schon um sechs Uhr morgens.",
               "Nach dem Regen roch der ganze Garten nach Erde und Blumen.",
               "Die Firma hat ihren Umsatz im letzten Quartal deutlich gesteigert.",
               "Ich lerne seit zwei Jahren Spanisch, aber ich spreche noch langsam.",
               "Am Wochenende findet auf dem Marktplatz ein großes Musikfestival statt.",
               "Der Arzt empfahl ihm, mehr Wasser zu trinken und früher schlafen zu gehen."),
    "French": ("Le musée ouvre ses portes gratuitement le premier dimanche du mois.",
               "Nous avons pris le train de nuit pour aller à Marseille.",
               "La boulangerie du quartier vend le meilleur pain de la ville.",
               "Il pleut depuis trois jours et la rivière commence à déborder.",
               "Mon frère travaille comme infirmier dans un grand hôpital.",
               "Les élèves ont planté des arbres dans la cour de l'école.",
               "Pourriez-vous m'indiquer le chemin de la gare, s'il vous plaît ?",
               "La mairie a annoncé la construction d'une nouvelle piscine.",
               "Elle a écrit un roman sur la vie des pêcheurs bretons.",
               "Le concert a été annulé à cause de la tempête.",
               "Chaque été, nous passons une semaine chez nos cousins à la campagne.",
               "Les prix des légumes ont beaucoup augmenté cette année.",
               "Le chat dort toute la journée sur le rebord de la fenêtre."),
    "Spanish": ("El mercado central abre todos los días a las siete de la mañana.",
                "Mi hermana estudia medicina en la universidad de Salamanca.",
                "El equipo local ganó el partido en el último minuto.",
                "Este verano queremos recorrer la costa en bicicleta.",
                "La biblioteca organiza talleres de lectura para niños los sábados.",
                "El ayuntamiento prometió arreglar las calles antes de las fiestas.",
                "¿Sabes a qué hora sale el último autobús?",
                "Los científicos descubrieron una nueva especie de rana en la selva.",
                "Mi abuelo siempre cuenta historias de cuando era pescador.",
                "La tienda de la esquina vende frutas muy frescas.",
                "El museo prepara una exposición sobre la historia del chocolate.",
                "Después de la cena dimos un paseo por la playa."),
    "Italian": ("Il treno per Firenze parte dal binario tre.", "Ogni domenica mangiamo la pasta dalla nonna.",
                "La città ha inaugurato un nuovo parco vicino al fiume.",
                "Il negozio di biciclette è chiuso per ferie fino a lunedì.",
                "Gli studenti hanno organizzato una mostra di fotografia."),
    "Portuguese": ("A padaria abre cedo e o pão ainda está quente.",
                   "Vamos visitar os nossos primos no Porto no próximo mês.",
                   "O festival de música atraiu milhares de pessoas à praia.",
                   "A escola recebeu novos computadores para a biblioteca."),
}
EN_SUBJECTS = ("The museum", "My neighbour", "The city council", "Our team", "The new bakery", "The library",
               "A group of students", "The train company", "The local farmer", "My best friend", "The hospital",
               "The orchestra")
EN_ACTIONS = ("will open a new exhibition next month", "planted two hundred trees along the river",
              "is looking for volunteers for the summer festival", "changed its opening hours this week",
              "won an award for its work with children", "will close early on Friday because of the storm",
              "started offering free lessons on Saturday mornings", "raised enough money to repair the old bridge",
              "invited everyone to a picnic in the park", "bought a new electric bus",
              "is organising a book swap in the town square", "found a lost dog near the station")
EN_TAILS = ("", " Please bring a friend.", " The weather should be sunny.", " Tickets are free for children.",
            " Everyone is very excited about it.", " More information will follow soon.")

BOOKS = (("Pride and Prejudice", "novel"), ("Moby-Dick", "novel"), ("The Odyssey", "epic poem"),
         ("Don Quixote", "novel"), ("Hamlet", "play"), ("War and Peace", "novel"), ("Things Fall Apart", "novel"),
         ("One Hundred Years of Solitude", "novel"), ("The Divine Comedy", "poem"), ("Frankenstein", "novel"),
         ("The Tale of Genji", "novel"), ("Crime and Punishment", "novel"), ("The Little Prince", "novella"),
         ("Jane Eyre", "novel"), ("The Great Gatsby", "novel"), ("Beloved", "novel"))
COUNTRIES = ("Portugal", "Kenya", "Japan", "Canada", "Poland", "Chile", "Australia", "Finland", "Egypt", "Peru",
             "India", "Norway", "Vietnam", "Morocco", "Argentina", "Ireland", "Mongolia", "Ghana", "Thailand",
             "Iceland", "Colombia", "Greece", "Nepal", "Hungary", "New Zealand", "Senegal", "Indonesia", "Cuba")
ELEMENTS = ("oxygen", "iron", "gold", "sodium", "helium", "carbon", "silver", "copper", "neon", "calcium",
            "potassium", "uranium", "mercury", "tin", "zinc")
INVENTIONS = ("the telephone", "the light bulb", "the printing press", "penicillin", "the World Wide Web",
              "the steam engine", "the bicycle", "the thermometer", "paper", "the compass", "the radio",
              "the airplane", "vaccination", "the periodic table", "the microscope")
ACRONYMS = ("NASA", "UNESCO", "HTML", "DNA", "GDP", "CPU", "HTTP", "LED", "RADAR", "SCUBA", "UNICEF", "JPEG",
            "USB", "WHO", "PDF", "GPS", "ATM", "SQL", "NATO", "FAQ")
UNIT_PAIRS = (("centimeters", "meter"), ("grams", "kilogram"), ("seconds", "hour"), ("minutes", "day"),
              ("ounces", "pound"), ("inches", "foot"), ("milliliters", "liter"), ("days", "leap year"),
              ("feet", "mile"), ("bytes", "kilobyte"))
OPEN_QA = ("Why is the sky blue?", "How do bees make honey?", "What causes hiccups?", "Why do cats purr?",
           "How do airplanes stay in the air?", "What is the tallest mountain in Africa?",
           "Why do leaves change colour in autumn?", "How long does it take light from the Sun to reach Earth?",
           "What is the largest ocean on Earth?", "How many bones are in the adult human body?",
           "Why does ice float on water?", "What is the longest river in South America?",
           "How do vaccines train the immune system?", "What is the smallest country in the world?",
           "Why do we have seasons?", "How does a refrigerator keep food cold?", "What do pandas eat?",
           "Which planet has the most moons?", "How is glass made?", "Why do onions make people cry?",
           "How do I remove a coffee stain from a white shirt?", "How can I fall asleep faster?",
           "What is a good way to start learning to play the guitar?", "How do I keep basil alive indoors?",
           "What should I pack for a three-day hiking trip?", "How do I politely decline an invitation?",
           "What is the best way to memorize vocabulary in a new language?", "How does compound interest work?",
           "What is the difference between a crocodile and an alligator?", "How do noise-cancelling headphones work?")

# The built-in functions and types (`site` adds exit, help, ... only in some interpreters, so they are left out).
BUILTIN_NAMES = tuple(n for n in dir(builtins) if n.islower() and not n.startswith("_")
                      and n not in ("copyright", "credits", "exit", "help", "license", "quit"))
CODE_LANGUAGES = ("Python", "Python", "Python", "JavaScript", "TypeScript", "C++", "Java", "Rust", "Go", "C#",
                  "Bash", "Ruby")
CODE_TASKS = ("checks whether a string is a palindrome, ignoring spaces and punctuation",
              "returns the n-th Fibonacci number using memoization", "reverses a singly linked list",
              "merges two sorted lists into one sorted list", "counts how often each word appears in a text",
              "finds the longest common prefix of a list of strings", "validates an email address",
              "computes the greatest common divisor of two integers", "flattens an arbitrarily nested list",
              "removes duplicates from a list while keeping the original order",
              "converts a Roman numeral to an integer", "checks whether a number is prime",
              "finds the two numbers in an array that add up to a target", "implements binary search",
              "rotates a square matrix by 90 degrees", "parses a CSV file and prints the average of a column",
              "implements a simple stack with push, pop and peek", "implements a least-recently-used cache",
              "returns all permutations of a string", "checks whether parentheses in a string are balanced",
              "computes the moving average of a list of numbers", "finds the k largest elements in a list",
              "converts a temperature between Celsius and Fahrenheit", "groups a list of words into anagrams",
              "counts the vowels in a sentence", "computes the edit distance between two strings",
              "finds the median of two sorted arrays", "downloads a web page and counts its links",
              "reads a text file and prints its ten longest lines", "implements breadth-first search on a graph",
              "detects a cycle in a directed graph", "shuffles a list uniformly at random",
              "formats a number of seconds as hours, minutes and seconds",
              "compresses a string with run-length encoding", "finds the first non-repeating character in a string",
              "implements a simple to-do list that is saved to a JSON file", "computes the factorial of n iteratively",
              "checks whether two rectangles overlap", "generates all prime numbers below n with a sieve",
              "converts a snake_case string to camelCase")
CODE_EXTRAS = ("", " Include a few test cases.", " Explain the time complexity.", " Add comments to the code.",
               " Handle invalid input gracefully.", " Keep it as short as possible.",
               " Then explain how you would test it.")

# ---------------------------------------------------------------------------------------------------------------
# Offline text sources
# ---------------------------------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return " ".join(text.split())


def _is_prose(paragraph: str) -> bool:
    """A paragraph of running text (not a code block, table or heading) of a usable length."""
    words = paragraph.split()
    letters = sum(c.isalpha() or c.isspace() for c in paragraph) / max(len(paragraph), 1)
    return (30 <= len(words) <= MAX_PASSAGE_WORDS and letters > 0.85 and not paragraph.startswith((" ", "*", ">"))
            and "****" not in paragraph and "====" not in paragraph and "---" not in paragraph)


def _paragraphs(text: str) -> list[str]:
    return [_clean(p) for p in re.split(r"\n\s*\n", text) if _is_prose(p)]


def _public_objects(module) -> list[tuple[str, object]]:
    """(qualified name, object) for a module, its public functions and classes and the classes' public methods."""
    out = [(module.__name__, module)]
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj):
            out.append((f"{module.__name__}.{name}", obj))
        if inspect.isclass(obj):
            out.extend((f"{module.__name__}.{name}.{m}", v) for m, v in sorted(vars(obj).items())
                       if not m.startswith("_") and callable(v))
    return out


@functools.cache
def stdlib_docs() -> tuple[tuple[str, str], ...]:
    """(qualified name, docstring) for the public API of DOC_MODULES, in a fixed order."""
    docs = []
    for module_name in DOC_MODULES:
        for name, obj in _public_objects(importlib.import_module(module_name)):
            doc = inspect.getdoc(obj)
            if doc:
                docs.append((name, doc))
    return tuple(docs)


@functools.cache
def doc_passages() -> tuple[tuple[str, str], ...]:
    """(source, passage): prose paragraphs of the Python reference (`pydoc_data.topics`) and stdlib docstrings."""
    topics = pydoc_data.topics.topics
    out = [(f"the Python reference, section '{k}'", p) for k in sorted(topics) for p in _paragraphs(topics[k])]
    out += [(f"the documentation of `{name}`", p) for name, doc in stdlib_docs() for p in _paragraphs(doc)]
    return tuple(out)


@functools.cache
def documented_functions() -> tuple[tuple[str, str], ...]:
    """(qualified name, one-line summary) for stdlib functions and methods with a plain first docstring line."""
    out = []
    for name, doc in stdlib_docs():
        first = doc.split("\n")[0].strip()
        is_function = name.count(".") >= 1 and name.rsplit(".", 1)[1][0].islower()
        if is_function and 4 <= len(first.split()) <= 25 and first[0].isupper() and "(" not in first:
            out.append((name, first))
    return tuple(out)


def _money(rng: random.Random, lo: int, hi: int) -> str:
    return f"${rng.randrange(lo, hi):,}"


def news_story(rng: random.Random) -> tuple[str, list[str]]:
    """A short made-up local news report and questions it answers."""
    city, day, month = rng.choice(CITIES), rng.choice(WEEKDAYS), rng.choice(MONTHS)
    a, b = rng.sample(NAMES, 2)
    n, m = rng.randrange(12, 900), rng.randrange(2, 40)
    kind = rng.randrange(6)
    if kind == 0:
        money = _money(rng, 200_000, 9_000_000)
        text = (f"The {city} city council voted {m + 5} to {m % 5} on {day} to approve a {money} plan to rebuild "
                f"the old harbour promenade. The project will add {n} metres of cycle lanes, new lighting and a "
                f"small playground. Council member {a} said the promenade had been 'falling apart for a decade'. "
                f"Work is expected to start in {month} and last about {m} months. Some shop owners, led by {b}, "
                f"worry that the construction will keep tourists away during the busy season.")
        questions = ["How much money did the council approve?", "Who is worried about the project, and why?",
                     "When will the work start, and how long will it last?", "What will the project add?"]
    elif kind == 1:
        text = (f"A team of researchers at the University of {city} has identified {m} previously unknown "
                f"species of beetle in a forest reserve only {n} kilometres from the city centre. The team, led "
                f"by biologist {a}, spent {m + 10} weeks collecting samples at night. 'We were not expecting "
                f"anything new so close to home,' {a} said. The findings were published in {month}. Conservation "
                f"groups are now asking for the reserve to be expanded, and {b}, who runs a local hiking club, "
                f"has started a petition that has {n * 7} signatures so far.")
        questions = ["How many new species were found?", "Who led the research team?",
                     "What are conservation groups asking for?", "How many people signed the petition?"]
    elif kind == 2:
        text = (f"Thousands of people gathered in {city} on {day} for the {m}th annual lantern festival. "
                f"Organisers said about {n * 30} visitors came, a record for the event. The highlight was a "
                f"parade of {n} hand-made lanterns built by local schools. {a}, who has volunteered at the "
                f"festival for {m % 15 + 3} years, said the atmosphere was 'better than ever'. Traffic was "
                f"diverted around the old town until midnight, and {b}, a spokesperson for the police, reported "
                f"no serious incidents.")
        questions = ["How many visitors came to the festival?", "What was the highlight of the event?",
                     "What did the police report?", "How long has the volunteer helped at the festival?"]
    elif kind == 3:
        money = _money(rng, 5_000, 90_000)
        text = (f"Students at {city} Secondary School raised {money} for a new science laboratory by running a "
                f"charity marathon last {day}. {n} runners took part, including {m} teachers. Head teacher {a} "
                f"thanked the families who sponsored the runners and said the laboratory should open in {month}. "
                f"The fastest runner, sixteen-year-old {b}, finished in just under three hours and said the "
                f"last five kilometres were 'pure willpower'.")
        questions = ["How much money did the students raise?", "How many teachers took part?",
                     "When should the laboratory open?", "Who was the fastest runner?"]
    elif kind == 4:
        text = (f"A storm brought heavy rain and winds of up to {n % 80 + 60} km/h to {city} overnight on {day}. "
                f"About {n * 11} homes lost power for several hours, and {m} roads were closed because of fallen "
                f"trees. Emergency services answered more than {n} calls. {a}, who runs a cafe near the river, "
                f"said water reached the front door but did not come inside. The regional weather office, "
                f"represented by {b}, expects calmer weather by the weekend.")
        questions = ["How many homes lost power?", "How many roads were closed, and why?",
                     "What happened at the cafe near the river?", "What weather is expected by the weekend?"]
    else:
        price = _money(rng, 20, 400)
        text = (f"{city}-based start-up Brightleaf launched its first product on {day}: a solar-powered garden "
                f"sensor that tells gardeners when to water their plants. The device costs {price} and has "
                f"already received {n * 4} pre-orders, according to co-founder {a}. The company employs {m} "
                f"people and plans to hire more in {month}. Critics, including technology reviewer {b}, question "
                f"whether gardeners need another gadget, but early testers praised its long battery life.")
        questions = ["What product did the company launch?", "How much does the device cost?",
                     "How many pre-orders has it received?", "What do critics question?"]
    return text, questions


def _passage(rng: random.Random) -> tuple[str, str, list[str]]:
    """(source description, passage, questions it answers) from the docs or, half the time, a made-up report."""
    if rng.random() < 0.5:
        text, questions = news_story(rng)
        return "a local news report", text, questions
    source, text = rng.choice(doc_passages())
    return source, text, []


# ---------------------------------------------------------------------------------------------------------------
# Category builders: each is an endless generator of prompt texts drawing from its own rng
# ---------------------------------------------------------------------------------------------------------------


def _writing(rng: random.Random) -> Iterator[str]:
    while True:
        form, topic, constraint = rng.choice(WRITING_FORMS), rng.choice(WRITING_TOPICS), rng.choice(
            WRITING_CONSTRAINTS)
        kind = rng.randrange(4)
        if kind == 0:
            yield f"Write a {form} about {topic}. {constraint}".strip()
        elif kind == 1:
            yield f"Write a {form} about {topic} for {rng.choice(AUDIENCES)}. {constraint}".strip()
        elif kind == 2:
            words = rng.randrange(3, 10) * 20
            yield f"In about {words} words, write a {form} on the theme of {topic}."
        else:
            _, text, _ = _passage(rng)
            yield (f"Rewrite the following paragraph in the voice of {rng.choice(REWRITE_STYLES)}, keeping all "
                   f"the facts:\n\n{text}")


def _personas(rng: random.Random) -> Iterator[str]:
    while True:
        opener = rng.choice(ROLEPLAY_OPENERS).format(p=rng.choice(PERSONAS))
        yield f"{opener} {rng.choice(ROLEPLAY_QUESTIONS)}"


def _ordering_puzzle(rng: random.Random) -> str:
    people = rng.sample(NAMES, rng.randrange(3, 6))
    attr = rng.choice((("taller", "shortest", "tallest"), ("older", "youngest", "oldest"),
                       ("faster", "slowest", "fastest")))
    facts = " ".join(f"{x} is {attr[0]} than {y}." for x, y in itertools.pairwise(people))
    ask = rng.choice(attr[1:])
    return f"{facts} Who is the {ask}? Explain your reasoning step by step."


def _reasoning_puzzle(rng: random.Random) -> str:
    a, b, c = rng.sample(NAMES, 3)
    day, k = rng.randrange(7), rng.randrange(3, 200)
    kind = rng.randrange(8)
    if kind == 0:
        return _ordering_puzzle(rng)
    if kind == 1:
        return f"If today is {WEEKDAYS[day]}, what day of the week will it be in {k} days? Show your work."
    if kind == 2:
        x, y = rng.sample(("glorps", "mibbles", "zorks", "quandles", "flerns", "tazzits"), 2)
        z = rng.choice(("blue", "very old", "able to swim", "made of glass", "noisy"))
        return (f"All {x} are {y}. Some {y} are {z}. Can we conclude that some {x} are {z}? Explain why or "
                f"why not.")
    if kind == 3:
        d1, d2, d3 = rng.randrange(1, 9), rng.randrange(1, 9), rng.randrange(1, 9)
        t1, t2, t3 = rng.choice(("north", "south")), rng.choice(("east", "west")), rng.choice(COMPASS)
        return (f"{a} walks {d1} km {t1}, then turns and walks {d2} km {t2}, then walks {d3} km {t3}. How far is "
                f"{a} from the starting point, and in which direction?")
    if kind == 4:
        return (f"{a} says: '{b} is lying.' {b} says: '{c} is lying.' {c} says: 'Both {a} and {b} are lying.' "
                f"Exactly who is telling the truth? Reason carefully.")
    if kind == 5:
        return (f"{a} is {b}'s mother's only brother's daughter. How is {a} related to {b}? "
                f"Explain the relationship.")
    if kind == 6:
        n = rng.randrange(3, 12)
        return (f"A clock loses {n} minutes every hour. It was set to the correct time at noon. What time "
                f"will it show when the correct time is {rng.randrange(2, 11)} p.m. the same day?")
    shirts, socks = rng.randrange(3, 9), rng.randrange(2, 7)
    return (f"A drawer contains {shirts} red socks and {socks} blue socks, mixed in the dark. How many socks "
            f"must {a} take out to be sure of having a matching pair? And to be sure of two blue socks?")


def _reasoning(rng: random.Random) -> Iterator[str]:
    while True:
        yield _reasoning_puzzle(rng)


def _math_problem(rng: random.Random) -> str:
    r = rng.randrange
    kind = r(14)
    if kind == 0:
        pts = [(r(-6, 7), r(-6, 7)) for _ in range(3)]
        return f"A triangle has vertices at {pts[0]}, {pts[1]} and {pts[2]}. What is its area?"
    if kind == 1:
        a, x, b = r(2, 13), r(-20, 21), r(-30, 31)
        return f"Solve for x: {a}x + {b} = {a * x + b}."
    if kind == 2:
        x, y, a, b, c, d = r(-9, 10), r(-9, 10), r(1, 7), r(1, 7), r(1, 7), r(-7, -1)
        return (f"Solve the system of equations: {a}x + {b}y = {a * x + b * y} and {c}x {d:+d}y = "
                f"{c * x + d * y}.")
    if kind == 3:
        p, q = r(-9, 10), r(-9, 10)
        return f"Find the roots of x^2 {-(p + q):+d}x {p * q:+d} = 0 and check them."
    if kind == 4:
        a, d, n = r(1, 20), r(2, 9), r(10, 60)
        return f"What is the sum of the first {n} terms of the arithmetic sequence {a}, {a + d}, {a + 2 * d}, ...?"
    if kind == 5:
        return f"Two fair dice are rolled. What is the probability that the sum is {r(2, 13)}?"
    if kind == 6:
        g = r(2, 15)
        return f"Find the greatest common divisor and the least common multiple of {g * r(2, 20)} and {g * r(2, 20)}."
    if kind == 7:
        c = [r(-9, 10) for _ in range(4)]
        return (f"Find the derivative of f(x) = {c[0]}x^3 {c[1]:+d}x^2 {c[2]:+d}x {c[3]:+d}, and evaluate it at "
                f"x = {r(-3, 4)}.")
    if kind == 8:
        a, b = r(0, 3), r(3, 7)
        return f"Compute the integral of {r(1, 6)}x^2 {r(-5, 6):+d}x from x = {a} to x = {b}."
    if kind == 9:
        return f"A circle has radius {r(2, 30)} cm. What are its area and circumference?"
    if kind == 10:
        n = r(5, 16)
        return f"In how many ways can a committee of {r(2, n - 1)} people be chosen from {n} people?"
    if kind == 11:
        s, d = r(10, 60), r(1, 9) * 2
        return f"If x + y = {s + (d % 2)} and x - y = {d}, what is the value of x * y?"
    if kind == 12:
        a, b = r(3, 25), r(3, 25)
        return f"A right triangle has legs of length {a} and {b}. How long is the hypotenuse? What is the area?"
    return f"Convert the decimal number {r(20, 1000)} to binary and to hexadecimal, and explain the method."


def _math(rng: random.Random) -> Iterator[str]:
    while True:
        yield _math_problem(rng)


def _word_problem(rng: random.Random) -> str:
    r = rng.randrange
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = r(15)
    if kind == 0:
        return (f"{name} has {r(5, 60)} {item}. {name} buys {r(2, 9)} packs with {r(3, 13)} {item} in each pack "
                f"and then gives {r(2, 15)} to {other}. How many {item} does {name} have now?")
    if kind == 1:
        price, n = r(2, 15), r(2, 9)
        return (f"A shop sells {item} for ${price} each. {name} buys {n} of them and pays with a "
                f"${(price * n // 20 + 1) * 20} bill. How much change does {name} get?")
    if kind == 2:
        return (f"{name} earns ${r(12, 45)} per hour and works {r(10, 41)} hours a week. {name} spends "
                f"{r(2, 8) * 10}% of the pay on rent. How much is left after {r(2, 9)} weeks?")
    if kind == 3:
        return (f"A train travels at {r(6, 15) * 10} km/h for {r(1, 5)} hours and then at {r(4, 12) * 10} km/h for "
                f"{r(1, 4)} more hours. How far does it travel in total, and what is its average speed?")
    if kind == 4:
        cups, cookies = r(2, 6), r(2, 5) * 12
        return (f"A recipe uses {cups} cups of flour to make {cookies} cookies. How many cups of flour does "
                f"{name} need to make {cookies * r(2, 6) // 2} cookies?")
    if kind == 5:
        age = r(6, 20) * 2
        return (f"{name} is {age} years old. {other} is {r(2, 9)} years older than half of {name}'s age. How old "
                f"will {other} be in {r(2, 12)} years?")
    if kind == 6:
        return (f"A tank holds {r(4, 20) * 50} liters of water. It is filled at {r(8, 20)} liters per minute, but "
                f"it leaks {r(1, 6)} liters per minute. How long does it take to fill the empty tank?")
    if kind == 7:
        return (f"A class has {r(20, 40)} students. {r(3, 7) * 10}% of them are girls, and half of the girls "
                f"play football. How many girls in the class play football?")
    if kind == 8:
        return (f"A jacket costs ${r(40, 200)}. It is on sale for {r(1, 6) * 5}% off, and then an {r(5, 11)}% "
                f"sales tax is added. What is the final price?")
    if kind == 9:
        pages, per_day, days = r(150, 600), r(10, 40), r(3, 9)
        return (f"{name}'s book has {pages} pages. {name} reads {per_day} pages a day. How many pages are left "
                f"after {days} days, and how many more days will it take to finish the book?")
    if kind == 10:
        rows, per = r(4, 15), r(5, 20)
        return (f"{name} plants {rows} rows of tomatoes with {per} plants in each row. {r(2, rows * per // 4)} "
                f"plants die. Each remaining plant gives {r(3, 12)} tomatoes. How many tomatoes does {name} "
                f"harvest?")
    if kind == 11:
        return (f"Museum tickets cost ${r(8, 25)} for adults and ${r(3, 12)} for children. A family of "
                f"{r(1, 4)} adults and {r(1, 5)} children visits. How much do they pay in total?")
    if kind == 12:
        return (f"{name} runs {r(2, 9)} km on each weekday and {r(5, 21)} km on each weekend day. How many "
                f"kilometres does {name} run in {r(2, 6)} weeks?")
    if kind == 13:
        chickens, cows = r(5, 40), r(2, 25)
        return (f"A farmer has only chickens and cows. Together they have {chickens + cows} heads and "
                f"{2 * chickens + 4 * cows} legs. How many chickens and how many cows are there?")
    return (f"{name} puts ${r(5, 50) * 100} in a savings account that pays {r(2, 7)}% simple interest per year. "
            f"How much money will be in the account after {r(2, 11)} years?")


def _math_reasoning(rng: random.Random) -> Iterator[str]:
    while True:
        yield _word_problem(rng)


def _coding(rng: random.Random) -> Iterator[str]:
    while True:
        kind = rng.randrange(6)
        if kind <= 1:
            yield (f"Write a {rng.choice(CODE_LANGUAGES)} function that {rng.choice(CODE_TASKS)}."
                   f"{rng.choice(CODE_EXTRAS)}")
        elif kind == 2:
            name, summary = rng.choice(documented_functions())
            yield (f"The Python standard library function `{name}` is documented as: \"{summary}\" Explain what "
                   f"it does and show a short example of using it.")
        elif kind == 3:
            name, summary = rng.choice(documented_functions())
            yield (f"Implement a Python function `{name.split('.')[-1]}` from scratch that matches this "
                   f"description: \"{summary}\" Do not import the standard library version.")
        elif kind == 4:
            word = rng.choice(keyword.kwlist)
            yield f"Explain the Python keyword `{word}` with a small code example and a common mistake."
        else:
            other = rng.choice([lang for lang in CODE_LANGUAGES if lang != "Python"])
            yield (f"Write a program in Python that {rng.choice(CODE_TASKS)}, then translate it to {other} and "
                   f"point out the main differences.")


def _people_records(rng: random.Random) -> str:
    people = rng.sample(NAMES, rng.randrange(3, 6))
    lines = [f"{p} is a {rng.randrange(22, 70)}-year-old {rng.choice(JOBS)} who moved to {rng.choice(CITIES)} in "
             f"{rng.randrange(1990, 2024)}." for p in people]
    return " ".join(lines)


def _orders(rng: random.Random) -> str:
    rows = [f"Order {rng.randrange(1000, 9999)}: {rng.randrange(1, 9)} x {rng.choice(ITEMS)} at "
            f"${rng.randrange(1, 30)}.{rng.randrange(0, 100):02d}, shipped to {rng.choice(CITIES)} on "
            f"{rng.choice(MONTHS)} {rng.randrange(1, 29)}" for _ in range(rng.randrange(3, 6))]
    return "\n".join(rows)


def _extraction(rng: random.Random) -> Iterator[str]:
    while True:
        kind = rng.randrange(5)
        if kind == 0:
            yield (f"Extract every person's name, age, job and city from the text below and return them as a JSON "
                   f"list.\n\n{_people_records(rng)}")
        elif kind == 1:
            yield (f"From these order records, build a table with the columns order number, item, quantity, "
                   f"price and destination, then give the total value of all orders.\n\n{_orders(rng)}")
        elif kind == 2:
            text, _ = news_story(rng)
            what = rng.choice(("all the numbers and what each one refers to", "every person named and their role",
                               "the places and dates mentioned", "the key facts as a bullet list"))
            yield f"Read the news report below and extract {what}.\n\n{text}"
        elif kind == 3:
            _, text = rng.choice(doc_passages())
            yield (f"List all the technical terms, function names and exception names that appear in this "
                   f"passage, each with a one-line explanation.\n\n{text}")
        else:
            reviews = [f"{i + 1}. {rng.choice(WRITING_TOPICS).capitalize()}: {rng.choice(REVIEW_VERDICTS)}."
                       for i in range(rng.randrange(3, 6))]
            yield ("Rate each of these short reviews from 1 (very negative) to 5 (very positive) and return the "
                   "result as JSON with the review number and score.\n" + "\n".join(reviews))


def _topic_questions(rng: random.Random, topics, templates, pairs) -> Iterator[str]:
    while True:
        if rng.random() < 0.2:
            a, b = rng.choice(pairs)
            yield rng.choice(PAIR_TEMPLATES).format(a=a, b=b)
        else:
            yield rng.choice(templates).format(t=rng.choice(topics))


def _stem(rng: random.Random) -> Iterator[str]:
    return _mixed(rng, ((1, _topic_questions(rng, STEM_TOPICS, STEM_TEMPLATES, SCIENCE_PAIRS)),
                        (4, _dictionary(rng, offline_text.STEM_FIELDS, DICTIONARY_STEM))))


def _humanities(rng: random.Random) -> Iterator[str]:
    return _mixed(rng, ((1, _topic_questions(rng, HUMANITIES_TOPICS, HUMANITIES_TEMPLATES, HUMANITIES_PAIRS)),
                        (2, _dictionary(rng, offline_text.HUMANITIES_FIELDS, DICTIONARY_HUMANITIES)),
                        (1, _fortune(rng, "humanities")), (1, _words(rng))))


def _english_sentence(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(documented_functions())[1]
    return f"{rng.choice(EN_SUBJECTS)} {rng.choice(EN_ACTIONS)}.{rng.choice(EN_TAILS)}"


def _translation(rng: random.Random) -> Iterator[str]:
    while True:
        if rng.random() < 0.5:
            source = rng.choice(sorted(FOREIGN_SENTENCES))
            text = " ".join(rng.sample(FOREIGN_SENTENCES[source], rng.randrange(1, 3)))
            yield rng.choice((f"Translate {source} to English: {text}",
                              f"What does this {source} text mean in English?\n{text}",
                              f"Please translate into English and explain any idioms: {text}"))
        else:
            target = rng.choice(LANGUAGES)
            text = " ".join(_english_sentence(rng) for _ in range(rng.randrange(1, 3)))
            yield rng.choice((f"Translate English to {target}: {text}", f"How do you say this in {target}? {text}",
                              f"Translate the following sentence into {target}:\n{text}"))


def _summarization(rng: random.Random) -> Iterator[str]:
    while True:
        source, text, _ = _passage(rng)
        yield rng.choice((f"Summarize: {text}",
                          f"Summarize the following text from {source} in two sentences.\n\n{text}",
                          f"Give a one-sentence TL;DR of this passage:\n{text}",
                          f"Write three bullet points capturing the main ideas of this text:\n\n{text}",
                          f"{text}\n\nSummarize the passage above for a busy reader."))


def _qa(rng: random.Random) -> Iterator[str]:
    while True:
        kind = rng.randrange(10)
        if kind == 0:
            country = rng.choice(COUNTRIES)
            yield rng.choice((f"What is the capital of {country}?", f"What currency is used in {country}?",
                              f"Which countries border {country}?", f"What is {country} famous for?",
                              f"What languages are spoken in {country}?"))
        elif kind == 1:
            title, form = rng.choice(BOOKS)
            yield rng.choice((f"Who wrote the {form} '{title}', and what is it about?",
                              f"When was '{title}' first published?", f"Who is the main character of '{title}'?"))
        elif kind == 2:
            element = rng.choice(ELEMENTS)
            yield rng.choice((f"What is the chemical symbol of {element}?", f"What is the atomic number of {element}?",
                              f"Where is {element} found in nature, and what is it used for?"))
        elif kind == 3:
            yield f"Who invented {rng.choice(INVENTIONS)}, and when?"
        elif kind == 4:
            yield f"What does {rng.choice(ACRONYMS)} stand for?"
        elif kind == 5:
            small, big = rng.choice(UNIT_PAIRS)
            yield f"How many {small} are there in a {big}?"
        elif kind == 6:
            yield f"What is the Python standard library module `{rng.choice(DOC_MODULES)}` used for?"
        elif kind == 7:
            yield f"What does the Python built-in `{rng.choice(BUILTIN_NAMES)}` do? Give an example."
        else:
            yield rng.choice(OPEN_QA)


def _rag(rng: random.Random) -> Iterator[str]:
    while True:
        source, text, questions = _passage(rng)
        if questions:
            question = rng.choice(questions)
        else:
            terms = re.findall(r'"([A-Za-z_][\w.]{2,30})"|`([A-Za-z_][\w.()]{2,30})`', text)
            term = next((a or b for a, b in terms), None)
            question = (f"According to the passage, what is said about {term}?" if term else
                        rng.choice(("What is the main point of this passage?",
                                    "What rule or behaviour does this passage describe?",
                                    "Which situation does the passage warn about, if any?")))
        extra = ""
        if rng.random() < 0.4:
            _, other, _ = _passage(rng)
            if len(text.split()) + len(other.split()) <= MAX_PASSAGE_WORDS + 60:
                extra = f"\n\n{other}"
        yield rng.choice((f"{text}{extra}\n\nAnswer using only the text above: {question}",
                          f"Context:\n{text}{extra}\n\nQuestion: {question}",
                          f"Read this passage from {source}.\n\n{text}{extra}\n\n{question}"))

# ---------------------------------------------------------------------------------------------------------------
# Offline text beyond the standard library (recipes/offline_text.py): dictionary, fortunes, packages, source
# ---------------------------------------------------------------------------------------------------------------
SETTINGS = ("in ancient Rome", "on a space station in 2150", "in a small fishing village", "during the gold rush",
            "in a busy modern hospital", "at a medieval castle", "in Victorian London", "on a cruise ship",
            "in a mountain monastery", "at a summer music festival", "on a research base in Antarctica",
            "in a 1980s video arcade", "on a pirate ship", "in a tiny bakery in Paris", "at a royal court",
            "in a post-apocalyptic city", "in a school for wizards", "at the first Olympic Games")
ROLE_TEMPLATES = ("You are a {job} {setting}. {q}", "Play the role of a {job} {setting} and stay in character. {q}",
                  "Imagine you are a {job} living {setting}. A stranger asks you: {q}")
DICTIONARY_STEM = ("In {field}, what is meant by '{w}'? Explain it for a beginner with an example.",
                   "A dictionary defines '{w}' ({field}) as: \"{d}\" Explain this in modern plain English and "
                   "say why it matters.",
                   "Explain the term '{w}' from {field}, and name two related concepts.",
                   "Write a short lesson for students about '{w}' in {field}.")
DICTIONARY_HUMANITIES = ("In {field}, what does '{w}' refer to? Give some historical background.",
                         "An old dictionary says that '{w}' ({field}) means: \"{d}\" Explain it and give an "
                         "example of where it appears.",
                         "Why is the idea of '{w}' important in {field}?")
WORD_QUESTIONS = ("What does the word '{w}' mean? Use it in two example sentences.",
                  "Where does the English word '{w}' come from, and how is it used today?",
                  "Explain the meaning of '{w}' to a ten-year-old.")
FORTUNE_PROMPTS = {
    "qa": ("What does this saying mean? Do you agree with it?\n\n\"{f}\"",
           "Explain the joke or the point of this quote:\n\n{f}"),
    "writing": ("Write a short story that ends with this line:\n\n\"{f}\"",
                "Write a poem inspired by this quote:\n\n{f}",
                "Write a short blog post that uses this quote as its starting point:\n\n{f}"),
    "humanities": ("In what historical or cultural context might someone have said this? Discuss.\n\n{f}",),
}
PACKAGE_PROMPTS = ("The Debian package '{name}' is described as \"{desc}\". What is it used for, and who would "
                   "install it?", "Explain to a new Linux user what a tool described as \"{desc}\" does.")
SOURCE_PROMPTS = ("Explain what this Python function from `{name}` does, step by step:\n\n```python\n{src}\n```",
                  "Write unit tests with pytest for this function (`{name}`):\n\n```python\n{src}\n```",
                  "Rewrite this function (`{name}`) in JavaScript:\n\n```python\n{src}\n```",
                  "Can this function be simplified or made faster? Explain and show an improved "
                  "version.\n\n```python\n{src}\n```")


def _mixed(rng: random.Random, weighted) -> Iterator[str]:
    """Draws from several generators: weighted is ((weight, generator or None), ...); a None (a source that is
    not installed) has no weight."""
    live = [(w, g) for w, g in weighted if g is not None]
    weights, gens = [w for w, _ in live], [g for _, g in live]
    while True:
        yield next(rng.choices(gens, weights)[0])


def _from(rng: random.Random, items, make) -> Iterator[str] | None:
    """Prompts make(rng, item) over a random item of `items`; None when `items` is empty."""
    if not items:
        return None
    return (make(rng, rng.choice(items)) for _ in itertools.count())


def _dictionary(rng: random.Random, fields: dict, templates) -> Iterator[str] | None:
    return _from(rng, offline_text.gcide_by_field(fields),
                 lambda r, e: r.choice(templates).format(w=e[0], field=e[1], d=e[2]))


def _fortune(rng: random.Random, category: str) -> Iterator[str] | None:
    return _from(rng, offline_text.fortunes(), lambda r, f: r.choice(FORTUNE_PROMPTS[category]).format(f=f))


def _words(rng: random.Random) -> Iterator[str] | None:
    return _from(rng, offline_text.gcide_entries(), lambda r, e: r.choice(WORD_QUESTIONS).format(w=e[0].lower()))


def _packages(rng: random.Random) -> Iterator[str] | None:
    return _from(rng, offline_text.debian_packages(),
                 lambda r, p: r.choice(PACKAGE_PROMPTS).format(name=p[0], desc=p[1]))


def _sources(rng: random.Random) -> Iterator[str] | None:
    return _from(rng, offline_text.stdlib_functions(tuple(DOC_MODULES)),
                 lambda r, f: r.choice(SOURCE_PROMPTS).format(name=f[0], src=f[1]))


def _roles(rng: random.Random) -> Iterator[str]:
    while True:
        yield rng.choice(ROLE_TEMPLATES).format(job=rng.choice(JOBS), setting=rng.choice(SETTINGS),
                                                q=rng.choice(ROLEPLAY_QUESTIONS))


def _writing_mixed(rng: random.Random) -> Iterator[str]:
    return _mixed(rng, ((4, _writing(rng)), (1, _fortune(rng, "writing"))))


def _roleplay(rng: random.Random) -> Iterator[str]:
    return _mixed(rng, ((1, _personas(rng)), (2, _roles(rng))))


def _coding_mixed(rng: random.Random) -> Iterator[str]:
    return _mixed(rng, ((3, _coding(rng)), (1, _sources(rng))))


def _qa_mixed(rng: random.Random) -> Iterator[str]:
    return _mixed(rng, ((1, _qa(rng)), (1, _fortune(rng, "qa")), (1, _words(rng)), (1, _packages(rng))))


BUILDERS: dict[str, Callable[[random.Random], Iterator[str]]] = {
    "writing": _writing_mixed, "roleplay": _roleplay, "reasoning": _reasoning, "math": _math,
    "math_reasoning": _math_reasoning, "coding": _coding_mixed, "extraction": _extraction, "stem": _stem,
    "humanities": _humanities, "translation": _translation, "summarization": _summarization, "qa": _qa_mixed,
    "rag": _rag,
}

# ---------------------------------------------------------------------------------------------------------------
# Spec-Bench overlap, assembly
# ---------------------------------------------------------------------------------------------------------------


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@functools.cache
def _spec_bench_ngrams(path: str) -> frozenset:
    grams = set()
    with open(path) as f:
        for line in f:
            for turn in json.loads(line)["turns"]:
                grams |= _ngrams(turn)
    return frozenset(grams)


def overlaps_spec_bench(prompts: Sequence[dict], spec_bench_path=SPEC_BENCH) -> list[dict]:
    """The prompts that share any 8-word sequence (case-insensitive, punctuation ignored) with a Spec-Bench turn."""
    bench = _spec_bench_ngrams(str(spec_bench_path))
    return [p for p in prompts if not _ngrams(p["text"]).isdisjoint(bench)]


def _category_prompts(category: str, n: int, rng: random.Random, banned: frozenset, seen: set) -> list[str]:
    """n prompts of one category not in `seen` (which gains them) with no 8-word sequence in `banned`."""
    out = []
    for attempt, text in enumerate(BUILDERS[category](rng)):
        if attempt > 50 * n:
            raise RuntimeError(f"category {category!r}: only {len(out)} distinct prompts after {attempt} draws")
        if text not in seen and _ngrams(text).isdisjoint(banned):
            seen.add(text)
            out.append(text)
            if len(out) == n:
                return out


def training_prompts(seed: int = 0, spec_bench_path=SPEC_BENCH, counts: dict | None = None) -> list[dict]:
    """`{"category", "text"}` chat prompts (CATEGORY_COUNTS), distinct, shuffled, deterministic for a seed.

    Prompts sharing an 8-word sequence with a Spec-Bench turn are skipped when the file at `spec_bench_path`
    exists. `counts` overrides CATEGORY_COUNTS (prompts per category).
    """
    counts = CATEGORY_COUNTS if counts is None else counts
    banned = _spec_bench_ngrams(str(spec_bench_path)) if Path(spec_bench_path).exists() else frozenset()
    prompts, seen = [], set()
    for category, n in sorted(counts.items()):
        rng = random.Random(f"{seed}/{category}")
        prompts += [{"category": category, "text": t} for t in _category_prompts(category, n, rng, banned, seen)]
    random.Random(seed).shuffle(prompts)
    return prompts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/prompts/v2.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spec-bench", default=str(SPEC_BENCH), help="Spec-Bench question.jsonl to keep out")
    args = parser.parse_args(argv)
    if not Path(args.spec_bench).exists():
        raise SystemExit(f"{args.spec_bench} not found: it is needed to keep benchmark text out of the prompts")
    prompts = training_prompts(args.seed, args.spec_bench)
    write_prompts(prompts, args.out)
    print(f"wrote {len(prompts)} prompts to {args.out}")


if __name__ == "__main__":
    main()
