"""The fixed word list of the embedded tokenizer: the words of robot-task prompts, subtasks,
captions and questions, each one token (with and without a leading space, lower-case and
capitalized). Any other text still encodes, byte by byte. Appending words at the end keeps
every existing id; never reorder or remove.
"""

_TEXT = """

task state action actions subtask bounding boxes box answer question
describe region caption image detect what which where how who is are
was were be this that these those there here it its they them
you your we our would should could can do does did done not no
yes of the a an and or but to in into on onto at by
for from with without off out up down over under above below
behind front next near far left right top bottom middle center
side sideways inside outside between all each every both other
another one two three four five six seven eight first second
third last then again until using toward towards away back forward
around through across along still only more less many much some
any same different color colour shape kind type size number many

pick place put push pull open close press turn rotate rotating
slide insert grasp grab hold release move reach lift lower raise
drop stack unstack sweep wipe clean tidy sort fold unfold pour
fill empty hang store set get take bring give go come stop start
go flip kick dunk hammer lock unlock plug unplug bypass screw
unscrew load unload arrange organize collect gather clear cover uncover
fetch find look point tap touch shake spin twist knock throw catch
roll carry align center hand serve wash dry cut chop cook heat
make prepare finish complete approach retract return wait keep
picked placed opened closed pressed pushed pulled

cup cups mug mugs plate plates bowl bowls dish dishes spoon fork
knife bottle can jar lid pot pan kettle glass tray basket bin
trash box boxes drawer drawers cabinet cupboard shelf shelves door
window button handle lever knob dial faucet sink counter table desk
chair bed floor wall towel cloth sponge napkin block blocks cube
cubes ball balls puck peg pegs nut bolt stick hole goal target
object objects item items thing things toy toys book books pen
marker box container bag fruit fruits apple apples banana bananas
orange oranges lemon lemons pear pears grape grapes strawberry
tomato potato carrot bread egg eggs milk water coffee tea food
machine microwave oven stove fridge laundry shirt sock socks shoe
shoes clothes kitchen bedroom bathroom room home house closet spill
gripper robot arm camera position joint cylinder sphere ring star
triangle square circle heart soccer basketball coffee wrist base
revolving clockwise counterclockwise degrees angle way half full

red green blue yellow orange purple pink brown black white gray
grey cyan magenta dark light big small large little tiny tall
short long wide narrow round flat empty full open closed clean
dirty wet dry hot cold new old heavy soft hard metal wooden
plastic paper leftmost rightmost closest nearest farthest biggest
smallest success failure done
"""
WORDS = tuple(dict.fromkeys(_TEXT.split()))
