"""Held-out behaviour data for MiniLM: (anchor, paraphrase, unrelated) sentence triples.

A pretrained model has no data it generates itself; what the gate checks instead is the behaviour
the model is used for: a paraphrase is closer to its anchor than an unrelated sentence is. Some of
the unrelated sentences share words with the anchor, so that word overlap alone does not pass.
Reviewed like golden data: a change here moves the metrics (and the build hash, as a source).
"""

TRIPLES = (
    ("A man is playing a guitar on stage.", "A musician performs with his guitar in front of an audience.", "The stage coach left town at dawn."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch.", "The stock market fell sharply on Monday."),
    ("How do I reset my password?", "What are the steps to change a forgotten password?", "How do I bake sourdough bread?"),
    ("The train to Paris was delayed by two hours.", "Our Paris-bound train arrived two hours late.", "Paris is the capital of France."),
    ("She bought fresh vegetables at the market.", "At the market she picked up some fresh produce.", "The market closed higher after the rate decision."),
    ("The doctor prescribed antibiotics for the infection.", "The physician gave her medicine to treat the bacterial infection.", "The computer was infected with a virus."),
    ("Children are playing football in the park.", "Kids kick a ball around in the park.", "The parking lot is full today."),
    ("The company reported record profits this quarter.", "The firm's quarterly earnings were the highest ever.", "The quarterback threw a long pass."),
    ("It is raining heavily in the city tonight.", "There is a downpour in town this evening.", "The city council approved the new budget."),
    ("He is learning to speak Japanese.", "He is studying the Japanese language.", "He ate Japanese food for dinner."),
    ("The bridge was closed for repairs.", "Repair work shut the bridge to traffic.", "She plays bridge with her friends on Fridays."),
    ("A woman is slicing onions in the kitchen.", "Someone is chopping an onion.", "The woman is reading a newspaper on the train."),
    ("The laptop battery drains very quickly.", "My notebook computer runs out of charge fast.", "The army battery fired its guns."),
    ("The museum opens at nine in the morning.", "Doors to the museum open at 9 a.m.", "The museum displays ancient Egyptian art."),
    ("Global temperatures have risen over the last century.", "The planet has warmed considerably in the past hundred years.", "The temperature of the oven should be 180 degrees."),
    ("The dog is barking at the mailman.", "A dog barks at the postal worker.", "The tree bark was covered in moss."),
    ("I would like to book a table for two.", "Can I reserve a table for two people?", "The table of contents lists ten chapters."),
    ("The flight was cancelled because of the storm.", "Bad weather grounded the plane.", "The birds took flight over the lake."),
    ("She won the chess tournament.", "She came first in the chess competition.", "The chess pieces are made of wood."),
    ("Water boils at one hundred degrees Celsius.", "At 100 degrees C water starts to boil.", "He has a degree in economics."),
    ("The new phone has an excellent camera.", "This smartphone takes great photos.", "Call me on the phone tomorrow."),
    ("The river flooded the village after the rain.", "Heavy rain made the river burst its banks and flood the village.", "The bank raised its interest rates."),
    ("A group of students is studying in the library.", "Several pupils are doing homework in the library.", "The software library needs an update."),
    ("The concert was sold out within minutes.", "All the concert tickets were gone almost immediately.", "They worked in concert to finish the project."),
)
